"""`looktwice train expert|llm --config CFG [--data ...] [--out DIR] [--resume [CKPT]] [--set KEY=VALUE]`.

Stage 1 (`expert`) and stage 2 (`llm`) of the MLLM training (agent/mllm/train). Settings come from a
YAML config (a file, or a shipped name such as `expert`, `llm-lora`); the flags below override it.
Multi-GPU: `accelerate launch -m agent.commands.train llm --config ...`.
Exit codes: 0 trained, 2 usage / config / data errors.
"""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
shipped configs: expert, llm-full, llm-lora, llm-qlora (llava-onevision 0.5B/7B), tiny-expert and
tiny-llm (CPU smoke runs on the tiny test model). Outputs in --out: checkpoints/step-N/ (resume with
--resume), log.jsonl, config.yaml, summary.json, and ltfm_expert.safetensors (expert) or model/
(llm; `looktwice ask --brain llava:<out>/model`)."""


EXPERT_EXAMPLE = "looktwice train expert --config expert --data /data/visa_root --out runs/expert"
LLM_EXAMPLE = (
    "looktwice train llm --config llm-lora --data instruct/instruct.json "
    "--expert runs/expert/ltfm_expert.safetensors --out runs/llm"
)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML config file, or a shipped config name")
    p.add_argument("--data", action="append", help="training data (repeatable); replaces the config's")
    p.add_argument("--out", help="output folder")
    p.add_argument("--model", help="base model: hub id or folder")
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        help="continue from the newest checkpoint in --out, or from the checkpoint folder given",
    )
    p.add_argument("--max-steps", type=int, help="optimizer steps (overrides epochs)")
    p.add_argument("--epochs", type=float, help="passes over the data")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--batch-size", type=int, help="per-device batch size")
    p.add_argument(
        "--device", help="where to train: auto (a GPU when there is one), cpu, cuda, cuda:N (default: the config's)"
    )
    p.add_argument("--dtype", help="weights of the loaded model: auto, bf16, fp16, fp32 (default: the config's)")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="any config field, e.g. lora.r=8 (repeatable)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add `train` with its `expert` and `llm` sub-commands to `sub`."""
    from agent.commands import with_examples

    p = sub.add_parser(
        "train",
        help="train the MLLM: stage 1 the anomaly expert, stage 2 projector + LLM (full, LoRA, QLoRA)",
        **with_examples(
            "Two-stage training of LLaVA-OneVision + the Look-Twice expert (Anomaly-OV).",
            [EXPERT_EXAMPLE, LLM_EXAMPLE],
            epilog=EPILOG,
        ),
    )
    stages = p.add_subparsers(dest="stage", metavar="STAGE", required=True)
    e = stages.add_parser(
        "expert",
        help="stage 1: the expert alone on labelled images (tower frozen)",
        **with_examples(
            "Balanced BCE on image labels (+ masks with mask_loss_weight > 0); --data: MVTec-layout "
            "roots or `looktwice data synth` folders. Writes <out>/ltfm_expert.safetensors.",
            [EXPERT_EXAMPLE, "looktwice train expert --config tiny-expert --data plates/ --out runs/tiny --max-steps 20"],
        ),
    )
    _add_common(e)
    e.set_defaults(func=cmd_train)
    m = stages.add_parser(
        "llm",
        help="stage 2: projector + LLM on LLaVA-JSON conversations (expert frozen)",
        **with_examples(
            "Full fine-tuning, LoRA or QLoRA (method in the config); --data: LLaVA JSON from "
            "`looktwice data instruct`. Writes <out>/model/ (load_model reads it) and, with LoRA, <out>/adapter/.",
            [LLM_EXAMPLE, "looktwice train llm --config llm-qlora --data instruct/instruct.json --out runs/llm --resume"],
        ),
    )
    _add_common(m)
    m.add_argument("--expert", help="expert weights (stage 1's ltfm_expert.safetensors), auto or none")
    m.add_argument(
        "--method", choices=["full", "lora", "qlora"],
        help="how to train the LLM; qlora is LoRA on the base loaded with quant=4bit (NF4), as --brain's quant option",
    )
    m.add_argument(
        "--eval-data", action="append", help="held-out LLaVA JSON: Yes/No detection accuracy before and after"
    )
    m.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from agent.console import EXIT_OK, info_line, usage_error

    try:
        from agent.mllm.train import (
            CheckpointError,
            TrainConfigError,
            TrainDataError,
            apply_overrides,
            load_config,
            train_stage,
        )
        from tools.ltfm.checkpoints import ModelNotFoundError
        from tools.ltfm.expert_io import ExpertWeightsError
    except ImportError as err:  # pragma: no cover - torch / transformers missing
        return usage_error(err)
    flags = {
        "data": args.data,
        "out": args.out,
        "model": args.model,
        "max_steps": args.max_steps,
        "epochs": args.epochs,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "device": args.device,
        "dtype": args.dtype,
        "progress": False if args.quiet else None,
    }
    if args.stage == "llm":
        flags.update({"expert": args.expert, "method": args.method, "eval_data": args.eval_data})
    try:
        cfg = load_config(args.config, overrides=args.set, stage=args.stage)
        cfg = apply_overrides(cfg, flags)
        result = train_stage(cfg, resume=args.resume, log=info_line)
    except (
        TrainConfigError,
        TrainDataError,
        CheckpointError,
        ExpertWeightsError,
        ModelNotFoundError,
        ImportError,
    ) as err:
        return usage_error(err)
    except (RuntimeError, ValueError) as err:
        return usage_error(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
    summary = result.to_json()
    what = ", ".join(f"{k} {v}" for k, v in result.artifacts.items())
    print(
        f"trained {args.stage}: {result.steps} steps (from {result.start_step}) in {result.seconds:.1f} s, "
        f"loss {summary['loss_start']:.4f} -> {summary['loss_end']:.4f}; {what}"
    )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """`python -m agent.commands.train expert|llm ...` (also under `accelerate launch -m`)."""
    from agent.commands import run_standalone

    return run_standalone("train", add_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
