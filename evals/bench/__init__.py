"""Speed benchmark of the whole inspection (`looktwice bench`): see `evals.bench.runner`."""
