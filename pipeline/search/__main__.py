"""`python -m pipeline.search`: search every loss of each transfer grid of params.yaml on its validation split,
then write the trials, the page and the chosen values' overlay (pipeline/search/summary.py).

Several workers may run this at once against one `search.storage` (`--worker N` gives each its own sampler
seed); each writes the outputs from everything the storage holds when it finishes, so the last one's are
complete. Errors are one line, before anything trains where the input is at fault.
"""
from __future__ import annotations

import argparse
import sys

from pipeline.config import ConfigError
from pipeline.setting import TRANSFER_SETTINGS, Setting


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.search", description=__doc__.splitlines()[0])
    parser.add_argument("--setting", action="append", choices=[s.value for s in TRANSFER_SETTINGS],
                        help="search only this setting (repeatable; default: every transfer grid with stages)")
    parser.add_argument("--loss", action="append", help="search only this loss key (repeatable)")
    parser.add_argument("--worker", type=int, default=0, help="this worker's index (its sampler seed)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    try:
        from pipeline.contracts import load_checked

        params = load_checked(args.params)
        settings = [Setting(s) for s in args.setting] if args.setting else [
            s for s in TRANSFER_SETTINGS if params.transfer.of(s).grid.declares_models()]
        plan = [(s, loss) for s in settings for loss in params.transfer.of(s).grid.loss
                if args.loss is None or loss in args.loss]
        if not plan:
            raise ConfigError(f"--loss {args.loss}: no such loss in the grids of {[s.value for s in settings]}")
        from pathlib import Path

        from pipeline.search.split import validation_split
        from pipeline.search.study import search_loss
        from pipeline.profiles import composed_profile
        from pipeline.search.summary import study_summary, write_outputs
        from pipeline.search.trial import prepare_bench

        if Setting.METRIC_LEARNING in settings and not params.validation.classes:
            validation_split(params, Setting.METRIC_LEARNING, "")  # its one-line refusal, before any training
    except (ConfigError, KeyError, ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    import sqlalchemy.exc

    from pipeline import infra
    from pipeline.search.study import storage, storage_url

    url = storage_url(params)
    try:
        storage(url)  # an unreachable storage fails here, not after a teacher has trained
    except sqlalchemy.exc.SQLAlchemyError as err:
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
        sys.exit(f"error: search.storage {infra.redact_uri(url)}: cannot open it ({reason})")
    benches = {}
    for setting in settings:
        bench = prepare_bench(params, setting)
        benches[setting.value] = {"teacher": bench.teacher, "split": bench.split.description, "notes": bench.notes}
        for found_setting, loss in plan:
            if found_setting is setting:
                search_loss(bench, loss, args.worker)
    summaries = [study_summary(params, s, loss) for s, loss in plan]
    paths = write_outputs(params, summaries, benches, composed_profile(Path(args.params)))
    print(f"search: {len(summaries)} studies; chosen values in {paths['overlay']}, trials in {paths['trials']}")


if __name__ == "__main__":
    main()
