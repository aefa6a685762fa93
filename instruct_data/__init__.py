"""Dataset readers, anomaly synthesis, instruction data and QA-set builders."""
