"""The ``hf-distill`` command: ``train``, ``cache-teacher``, ``evaluate``, ``push``, ``plan`` and ``recipes``. Help
texts come from the recipe schema and the ``metadata["help"]`` of `DistillationConfig`'s fields, so they are written
once."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import textwrap

from .recipes import RECIPE_SCHEMA, Key, RecipeError, find_recipe, load_recipe, shipped_recipes

__all__ = ["main", "build_parser"]


def _schema_help(schema: dict[str, Key], indent: int = 2) -> list[str]:
    lines = []
    for name, key in schema.items():
        extras = []
        if key.required:
            extras.append("required")
        if key.choices:
            extras.append("one of " + ", ".join(map(str, key.choices)))
        suffix = f" ({'; '.join(extras)})" if extras else ""
        text = textwrap.fill(f"{name}: {key.help}{suffix}", width=110, initial_indent=" " * indent,
                             subsequent_indent=" " * (indent + 4))
        lines.append(text)
        if key.children:
            lines.extend(_schema_help(key.children, indent + 2))
    return lines


def _config_help() -> list[str]:
    from transformers import TrainingArguments

    from .config import DistillationConfig

    base = {f.name for f in dataclasses.fields(TrainingArguments)}
    lines = []
    for f in dataclasses.fields(DistillationConfig):
        if f.name not in base:
            lines.append(textwrap.fill(f"{f.name}: {f.metadata.get('help', '')}", width=110, initial_indent="  ",
                                       subsequent_indent="      "))
    return lines


def _train_epilog() -> str:
    return "\n".join(
        [
            "recipe keys (docs/recipes.md):",
            *_schema_help(RECIPE_SCHEMA),
            "",
            "training: takes any TrainingArguments field (see transformers' docs) and these DistillationConfig fields:",
            *_config_help(),
            "",
            "examples:",
            "  hf-distill train                                   # the quickstart recipe",
            "  hf-distill train recipes/quickstart.yaml --set training.max_steps=20 --set objectives.0.temperature=4",
        ]
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-distill",
        description="Knowledge distillation for the Hugging Face stack: run a whole distillation from one recipe.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    train = sub.add_parser(
        "train",
        help="Distil a teacher into a student as a recipe describes; write the student and a report.",
        description="Run a recipe: load data, teacher and student, distil, evaluate, and write the student, its "
        "tokenizer, the resolved recipe, the trainer state and report.json / report.png to training.output_dir.",
        epilog=_train_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("recipe", nargs="?", default="quickstart",
                       help="A recipe file or the name of a shipped recipe (default: quickstart).")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="Override a recipe value (parsed as YAML); repeatable, e.g. --set training.max_steps=10.")

    evaluate = sub.add_parser(
        "evaluate",
        help="Evaluate a finished run's student against its teacher and rewrite its report.",
        description="Evaluate the student in an output directory (or the one a recipe points to) against its "
        "teacher on the recipe's evaluation data; print the table and rewrite report.json / report.png.",
    )
    evaluate.add_argument("target", metavar="RECIPE_OR_OUTPUT_DIR",
                          help="An output directory written by `hf-distill train`, or a recipe file.")

    cache = sub.add_parser(
        "cache-teacher",
        help="Run a recipe's teacher once over its data and store its signals (teacher.cache in the recipe).",
        description="Run the recipe's teacher over its training (and evaluation) data once and store its signals "
        "as a Hugging Face dataset in teacher.cache.path (docs/cache.md). `hf-distill train` with the same recipe "
        "then trains from the cache. A complete cache with the same fingerprint is reused; an interrupted one "
        "resumes.",
    )
    cache.add_argument("recipe", help="A recipe file or the name of a shipped recipe.")
    cache.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="Override a recipe value (parsed as YAML), e.g. --set teacher.cache.top_k=32.")

    push = sub.add_parser(
        "push",
        help="Upload a finished run to the Hugging Face Hub with a generated model card (docs/hub.md).",
        description=textwrap.fill(
            "Upload the student (safetensors), its tokenizer, projections, the resolved recipe, trainer_state.json, "
            "report.json / report.png and a model card (teacher vs student, objectives, training arguments, usage, "
            "the recipe to reproduce it) in one commit. The output directory is never changed. Options not given "
            "come from the `hub` section of OUTPUT_DIR/recipe.yaml. The token comes from `hf auth login` or HF_TOKEN "
            "(never from the command line). See docs/hub.md.", width=100),
        epilog="examples:\n  hf-distill push runs/quickstart --repo-id me/minilm-3l-distilled\n"
        "  hf-distill push runs/language-gpt2-cached --repo-id me/gpt2-2l --cache-repo-id me/gpt2-teacher-signals\n"
        "  hf-distill push runs/quickstart --repo-id me/minilm-3l-distilled --dry-run   # show files and card only",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    push.add_argument("output_dir", metavar="OUTPUT_DIR", help="An output directory written by `hf-distill train`.")
    push.add_argument("--repo-id", help="The model repository, NAMESPACE/NAME (default: hub.repo_id of the recipe).")
    push.add_argument("--private", action=argparse.BooleanOptionalAction, default=None,
                      help="Create the repositories as private (default: hub.private of the recipe, else true). An "
                      "existing repository keeps its visibility.")
    push.add_argument("--base-model", help="The teacher's Hub id for the card's base_model, when it cannot be found "
                      "from the recipe's teacher (a local folder).")
    push.add_argument("--cache-repo-id", help="Also upload the teacher-signal cache to this dataset repository, linked "
                      "from the card.")
    push.add_argument("--cache-path", help="The cache folder (default: teacher.cache.path of the recipe).")
    push.add_argument("--include-teacher", action="store_true", default=None,
                      help="Also upload OUTPUT_DIR/teacher (a teacher the recipe fine-tuned).")
    push.add_argument("--revision", help="The branch to commit to (default: main).")
    push.add_argument("--commit-message", help="The commit message.")
    push.add_argument("--dry-run", action="store_true",
                      help="Print the files that would be uploaded and the model card; no network call.")

    plan = sub.add_parser(
        "plan",
        help="Measure candidate students (layer subsets of the teacher) on this machine: parameters, size, latency, "
        "speed-up, and optionally fidelity after a few distillation steps (docs/plan.md).",
        description=textwrap.fill(
            "For each candidate student (the teacher's evenly spread layers, copied as `train` would; optionally "
            "narrower, randomly initialised models) print the parameters, the size of its safetensors file, the "
            "latency of one forward pass on a typical batch measured here (median of --repeats passes after "
            "--warmup, all models timed in turns, a fixed thread count) and the speed-up over the teacher, measured "
            "in the same run. --quick-distill N also distils each candidate for N steps with a recipe's data and "
            "objectives and prints its fidelity to the teacher before and after. A table, or JSON with --json. See "
            "docs/plan.md.", width=100),
        epilog="examples:\n"
        "  hf-distill plan --teacher sentence-transformers/all-MiniLM-L6-v2 --layers 2,3,4\n"
        "  hf-distill plan --recipe quickstart --quick-distill 20            # the recipe's teacher, data, objectives\n"
        "  hf-distill plan --teacher runs/my-teacher --widths 1,0.5 --json plan.json\n"
        "  hf-distill plan --teacher bert-base-uncased --batch-size 8 --seq-len 256 --threads 4 --json -",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    plan.add_argument("--teacher", help="The teacher: a model folder, a Hub id or package:<name> (default: the "
                      "recipe's teacher.model).")
    plan.add_argument("--recipe", help="A recipe file or shipped recipe name: its task and teacher, and for "
                      "--quick-distill its data, objectives and training arguments.")
    plan.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                      help="Override a value of --recipe (parsed as YAML), e.g. --set training.learning_rate=1e-4.")
    plan.add_argument("--task", help="How the teacher is loaded and evaluated: language, classification, embedding, "
                      "ranking (default: the recipe's, else detected from the teacher's architecture).")
    plan.add_argument("--layers", metavar="K,K,...", help="Student layer counts, each keeping K evenly spread teacher "
                      "layers (first and last kept), e.g. 2,3,4 (default: about 2/3, 1/2, 1/3 and 1/4 of the "
                      "teacher's layers).")
    plan.add_argument("--widths", metavar="W,W,...", default="1", help="Fractions of the teacher's width, e.g. 1,0.5 "
                      "(default 1). Below 1 the student has fewer attention heads and cannot copy the teacher's "
                      "weights: it is randomly initialised and gets no --quick-distill.")
    plan.add_argument("--batch-size", type=int, metavar="N", default=32,
                      help="Sequences in the timed batch (default 32).")
    plan.add_argument("--seq-len", type=int, metavar="N", default=128,
                      help="Tokens per sequence in the timed batch (default 128).")
    plan.add_argument("--repeats", type=int, metavar="N", default=5,
                      help="Timed forward passes per model; the median is reported (default 5).")
    plan.add_argument("--warmup", type=int, metavar="N", default=1,
                      help="Untimed forward passes per model first (default 1).")
    plan.add_argument("--threads", type=int, metavar="N",
                      help="torch threads while timing (default: torch's, usually the number of cores).")
    plan.add_argument("--device", default="cpu",
                      help="Where the models are timed: cpu, cuda, cuda:1, ... (default cpu).")
    plan.add_argument("--quick-distill", type=int, default=0, metavar="N",
                      help="Also distil each layer-subset candidate for N steps with --recipe and print its fidelity "
                      "to the teacher before and after (default 0: skip).")
    plan.add_argument("--eval-samples", type=int, metavar="N", default=128,
                      help="Evaluation examples for --quick-distill's fidelity (default 128; the recipe's "
                      "max_eval_samples if smaller).")
    plan.add_argument("--json", metavar="PATH", help="Also write the plan as JSON to PATH; `-` prints the JSON "
                      "instead of the table.")

    sub.add_parser("recipes", help="List the shipped recipes with a one-line description each.",
                   description="List the shipped recipes with a one-line description each.")
    return parser


def _list_recipes() -> None:
    import yaml

    for name, path in shipped_recipes().items():
        description = (yaml.safe_load(path.read_text()) or {}).get("description", "")
        print(f"{name:<28} {description}")
        print(f"{'':<28} {path}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "recipes":
            _list_recipes()
        elif args.command == "train":
            from .pipeline import train_recipe

            train_recipe(load_recipe(find_recipe(args.recipe), args.overrides))
        elif args.command == "cache-teacher":
            from .pipeline import cache_recipe

            cache_recipe(load_recipe(find_recipe(args.recipe), args.overrides))
        elif args.command == "evaluate":
            from .pipeline import evaluate_output_dir

            evaluate_output_dir(args.target)
        elif args.command == "push":
            _push(args)
        elif args.command == "plan":
            _plan(args)
    except RecipeError as err:
        print(f"hf-distill {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (ValueError, OSError, FloatingPointError) as err:
        # Bad input (a model, data, folder or setting) fails with a message naming the problem and its fix
        # (docs/troubleshooting.md); HF_DISTILL_TRACEBACK=1 shows where it was raised.
        if os.environ.get("HF_DISTILL_TRACEBACK") == "1":
            raise
        print(f"hf-distill {args.command}: error: {err}\n(HF_DISTILL_TRACEBACK=1 shows the traceback; causes and "
              "fixes: docs/troubleshooting.md)", file=sys.stderr)
        return 2
    except RuntimeError as err:
        from .hub import PushError

        if not isinstance(err, PushError):
            raise
        print(f"hf-distill {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


def _plan(args: argparse.Namespace) -> None:
    """``hf-distill plan``: options are checked (and the recipe validated) before any model loads. Progress goes to
    stderr, the table (or the JSON of ``--json -``) to stdout."""
    from pathlib import Path

    from .plan import PlanError, format_plan, parse_float_list, parse_int_list, plan_students

    if args.teacher is None and args.recipe is None:
        raise PlanError("`--teacher` is required (a model folder, Hub id or package:<name>), or give --recipe to use "
                        "its teacher, e.g. hf-distill plan --teacher sentence-transformers/all-MiniLM-L6-v2.")
    if args.overrides and args.recipe is None:
        raise PlanError(f"`--set` {args.overrides[0]!r} changes a recipe, but no --recipe is given; add --recipe.")
    if args.json not in (None, "-") and not Path(args.json).resolve().parent.is_dir():
        raise PlanError(f"`--json`: the folder of {args.json!r} does not exist; create it or choose another path.")
    layers = parse_int_list(args.layers, "--layers") if args.layers is not None else None
    widths = parse_float_list(args.widths, "--widths")
    recipe = load_recipe(find_recipe(args.recipe), args.overrides) if args.recipe else None

    def echo(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    import datasets
    from transformers.utils import logging

    # Loading, saving and map bars would bury the progress lines; restored after (main() may run in-process).
    bars = logging.is_progress_bar_enabled(), datasets.is_progress_bar_enabled()
    logging.disable_progress_bar()
    datasets.disable_progress_bars()
    try:
        plan = plan_students(
            args.teacher, layers, widths, task=args.task or "auto", batch_size=args.batch_size, seq_len=args.seq_len,
            repeats=args.repeats, warmup=args.warmup, threads=args.threads, device=args.device,
            quick_distill=args.quick_distill, recipe=recipe, eval_samples=args.eval_samples, echo=echo,
        )
    finally:
        if bars[0]:
            logging.enable_progress_bar()
        if bars[1]:
            datasets.enable_progress_bars()
    if args.json == "-":
        print(plan.to_json())
        return
    if args.json:
        Path(args.json).write_text(plan.to_json() + "\n")
    print(format_plan(plan))
    if args.json:
        print(f"JSON written to {args.json}")


_PUSH_KEYS = {"repo_id": "--repo-id", "base_model": "--base-model", "cache_repo_id": "--cache-repo-id",
              "cache_path": "--cache-path", "output_dir": "OUTPUT_DIR"}


def _push(args: argparse.Namespace) -> None:
    """``hf-distill push``: options not given come from the `hub` section of the run's recipe.yaml."""
    from pathlib import Path

    import yaml

    from .hub import plan_upload, push_to_hub

    recipe_file = Path(args.output_dir) / "recipe.yaml"
    hub = {}
    if recipe_file.is_file():
        hub = (yaml.safe_load(recipe_file.read_text(encoding="utf-8")) or {}).get("hub") or {}
    repo_id = args.repo_id or hub.get("repo_id")
    options = {
        "base_model": args.base_model or hub.get("base_model"),
        "cache_repo_id": args.cache_repo_id or hub.get("cache_repo_id"),
        "cache_path": args.cache_path,
        "include_teacher": bool(args.include_teacher if args.include_teacher is not None
                                else hub.get("include_teacher", False)),
    }
    if args.dry_run:
        from .hub import check_push_possible

        check_push_possible(repo_id, base_model=options["base_model"], cache_repo_id=options["cache_repo_id"],
                            keys=_PUSH_KEYS, ids_only=True)
        plan = plan_upload(args.output_dir, repo_id, keys=_PUSH_KEYS, **options)
        for label, files in ((repo_id, plan.files), (plan.cache_repo_id, plan.cache_files)):
            if files:
                print(f"would upload to {label}:")
                for name, value in sorted(files.items()):
                    size = len(value) if isinstance(value, bytes) else value.stat().st_size
                    print(f"  {name}  ({size:,} bytes)")
        print("\nREADME.md (the model card):\n")
        print(plan.card)
        return
    private = args.private if args.private is not None else hub.get("private", True)
    push_to_hub(args.output_dir, repo_id, private=private, revision=args.revision,
                commit_message=args.commit_message, echo=print, keys=_PUSH_KEYS, **options)


if __name__ == "__main__":
    sys.exit(main())
