"""`python -m pipeline.search`: search every method of each grid of params.yaml (the transfer losses, the
classification methods) on its validation split, then write the trials, the page and the chosen values'
overlay (pipeline/search/summary.py).

Several workers may run this at once against one `search.storage` (`--worker N` gives each its own sampler
seed); each writes the outputs from everything the storage holds when it finishes, so the last one's are
complete. Errors are one line, before anything trains where the input is at fault.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.config import ConfigError
from pipeline.setting import Setting


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.search", description=__doc__.splitlines()[0])
    parser.add_argument("--setting", action="append", choices=[s.value for s in Setting],
                        help="search only this setting (repeatable; default: every grid with stages)")
    parser.add_argument("--method", action="append", help="search only this loss or method key (repeatable)")
    parser.add_argument("--worker", type=int, default=0, help="this worker's index (its sampler seed)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    try:
        from pipeline.contracts import load_checked

        params = load_checked(args.params)
        grids = tuple(s for s in Setting if params.grid(s).declares_models())
        settings = [Setting(s) for s in args.setting] if args.setting else list(grids)
        plan = [(s, method) for s in settings for method in getattr(params.grid(s), s.method_key)
                if args.method is None or method in args.method]
        if not plan:
            raise ConfigError(f"--method {args.method}: no such method in the grids of {[s.value for s in settings]}")
        from pipeline.search.split import validation_split

        for setting in settings:
            if setting.unseen_classes and not params.validation.classes:
                validation_split(params, setting, "")  # its one-line refusal, before any training
    except (ConfigError, KeyError, ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    import sqlalchemy.exc

    from pipeline import infra
    from pipeline.profiles import composed_profile
    from pipeline.search.study import search_method, storage, storage_url
    from pipeline.search.summary import summaries, write_outputs
    from pipeline.search.trial import prepare_bench

    url = storage_url(params)
    try:
        storage(url)  # an unreachable storage fails here, not after a teacher has trained
    except sqlalchemy.exc.SQLAlchemyError as err:
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
        sys.exit(f"error: search.storage {infra.redact_uri(url)}: cannot open it ({reason})")
    for setting in settings:
        bench = prepare_bench(params, setting)
        for method in (m for s, m in plan if s is setting):
            search_method(bench, method, args.worker)
    studies = summaries(params, grids)
    paths = write_outputs(params, studies, composed_profile(Path(args.params)))
    print(f"search: {len(studies)} studies; chosen values in {paths['overlay']}, trials in {paths['trials']}")


if __name__ == "__main__":
    main()
