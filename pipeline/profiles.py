"""Profiles as overlays: `python -m pipeline.profiles NAME` writes the params.yaml DVC reads for profile NAME.

params.yaml, as committed, is the default CPU profile. Each file profiles/NAME.yaml states only what differs
from it; this command composes default + overlay, validates the result (`pipeline.config.validate_params`,
then `load_params` of the written file) and only then replaces params.yaml, atomically (a temporary file
beside it, then os.replace). Every error is one line naming the profile file and the dotted key.

Merge semantics (overlay over base, key by key):
- a mapping merges into a mapping: keys the overlay does not name keep the base's value;
- anything else replaces: lists, scalars, and a value whose type differs from the base's (a list of grid
  names is the whole list, never appended to);
- `KEY: !replace {...}` replaces the base's mapping whole instead of merging into it (a profile whose
  `teachers` must not inherit the default's simclr and proxy_anchor; `teachers: !replace {}` empties it,
  where a plain `{}` would merge nothing and keep them all);
- `KEY: !delete` removes KEY from the base (a key the base does not have is an error, not a no-op); in a
  flow mapping leave a space before the brace (`{KEY: !delete }`), as a tag runs to the next space.

Why YAML tags and not reserved keys: a tag marks the one node it applies to and cannot be confused with a
parameter, and an overlay read by a plain `yaml.safe_load` (DVC, or a script that still copies profile
files) fails loudly on the unknown tag instead of yielding a half-profile that looks like data.

Bases: an overlay may start with `extends: OTHER` to be composed over profile OTHER (itself composed over
its own base, down to the default) instead of the default: the paper-scale Cars and SOP profiles and the CUB
compression row are the CUB profile with a few changes; a search's chosen values (`NAME_tuned`) extend the
profile searched, whatever that extends. A chain that comes back to a profile is refused.

Where the default comes from once params.yaml has been overwritten: the composed params.yaml starts with a
header line `# profile: NAME ...`. The command reads the default from params.yaml when it has no such
header, and refuses (one line) to compose over one that has it: two profiles can never stack silently.
`--from-default` reads the committed default instead (`git show HEAD:params.yaml`, itself refused if it
carries a header). `git checkout params.yaml` brings the default back.

Usage: python -m pipeline.profiles NAME [--from-default]     (NAME: a file profiles/NAME.yaml)
"""
from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import ConfigError, load_params, validate_params

ROOT = Path(__file__).resolve().parents[1]
HEADER = re.compile(r"#\s*profile:\s*(\S+)")
EXTENDS = "extends"
USAGE = "usage: python -m pipeline.profiles NAME [--from-default]  (NAME: a file profiles/NAME.yaml)"


class Replace(dict):
    """A mapping tagged `!replace`: it replaces the base's mapping instead of merging into it."""


class _Delete:
    """The value of a key tagged `!delete`: the key is removed from the base."""

    def __repr__(self) -> str:
        return "!delete"


DELETE = _Delete()


class OverlayLoader(yaml.SafeLoader):
    """SafeLoader plus the two overlay tags; nothing else is constructed."""


def _replace(loader: OverlayLoader, node: yaml.Node) -> Replace:
    if not isinstance(node, yaml.MappingNode):
        raise yaml.constructor.ConstructorError(None, None, "!replace applies to a mapping only (lists and "
                                                "scalars replace anyway)", node.start_mark)
    return Replace(loader.construct_mapping(node, deep=True))


def _delete(loader: OverlayLoader, node: yaml.Node) -> _Delete:
    if not (isinstance(node, yaml.ScalarNode) and node.value == ""):
        raise yaml.constructor.ConstructorError(None, None, "!delete takes no value (write `KEY: !delete`)",
                                                node.start_mark)
    return DELETE


OverlayLoader.add_constructor("!replace", _replace)
OverlayLoader.add_constructor("!delete", _delete)


def merge(base: Any, overlay: Any, source: str, key: str = "") -> Any:
    """`overlay` over `base` by the rules of the module docstring; neither argument is modified."""
    if isinstance(overlay, Replace):
        return _plain(overlay, source, key)
    if not (isinstance(base, dict) and isinstance(overlay, dict)):
        return _plain(overlay, source, key)
    merged = copy.deepcopy(base)
    for name, value in overlay.items():
        dotted = f"{key}.{name}" if key else str(name)
        if value is DELETE:
            if name not in merged:
                raise ConfigError(f"{source}: {dotted}: !delete of a key the base does not have")
            del merged[name]
        else:
            merged[name] = merge(merged.get(name), value, source, dotted)
    return merged


def _plain(value: Any, source: str, key: str) -> Any:
    """`value` as plain data: tags inside a replaced or new value have nothing to apply to."""
    if value is DELETE:
        raise ConfigError(f"{source}: {key}: !delete inside a value that replaces (nothing to delete from)")
    if isinstance(value, dict):
        return {name: _plain(item, source, f"{key}.{name}" if key else str(name)) for name, item in value.items()}
    if isinstance(value, list):
        return [_plain(item, source, f"{key}.{i}") for i, item in enumerate(value)]
    return value


def profile_path(name: str, root: Path = ROOT) -> Path:
    return root / "profiles" / f"{name}.yaml"


def names(root: Path = ROOT) -> list[str]:
    """Every profile: the stems of profiles/*.yaml."""
    return sorted(p.stem for p in (root / "profiles").glob("*.yaml"))


def read_overlay(name: str, root: Path = ROOT) -> dict:
    """The overlay of profile `name` as written (tags constructed), refused on one line when unreadable."""
    path = profile_path(name, root)
    shown = path.relative_to(root) if path.is_relative_to(root) else path
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name) or not path.is_file():
        known = ", ".join(names(root))
        raise ConfigError(f"{shown}: no such profile (profiles: {known})")
    loader = OverlayLoader(path.read_text())  # a SafeLoader with two more tags: constructs no objects
    try:
        overlay = loader.get_single_data()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).replace("\n", " ")
        raise ConfigError(f"{shown}: invalid overlay YAML{where}: {problem}") from None
    finally:
        loader.dispose()
    if overlay is None:
        overlay = {}
    if not isinstance(overlay, dict) or isinstance(overlay, Replace):
        raise ConfigError(f"{shown}: expected a mapping of the keys that differ from the default")
    return overlay


def compose(name: str, default: dict, root: Path = ROOT) -> dict:
    """The parameters of profile `name`: its overlay over its bases (`extends`, down the chain) over `default`."""
    source = str(profile_path(name, root).relative_to(root))
    raw = _composed(name, default, root, ())
    validate_params(raw, f"{source} (composed over the default params.yaml)")
    return raw


def _composed(name: str, default: dict, root: Path, seen: tuple[str, ...]) -> dict:
    """Profile `name`'s overlay merged over its base's composition (`seen`: the profiles that extend it)."""
    source = str(profile_path(name, root).relative_to(root))
    overlay = read_overlay(name, root)
    base = default
    if EXTENDS in overlay:
        parent = overlay.pop(EXTENDS)
        if not isinstance(parent, str):
            raise ConfigError(f"{source}: {EXTENDS}: names one profile, got {parent!r}")
        if parent in (*seen, name):
            raise ConfigError(f"{source}: {EXTENDS}: {parent} closes a cycle ({' -> '.join((*seen, name, parent))})")
        base = _composed(parent, default, root, (*seen, name))
    return merge(base, overlay, source)


def profile_params(name: str, root: Path = ROOT) -> dict:
    """Profile `name` composed over root's default params.yaml and validated: the data that
    `python -m pipeline.profiles NAME` writes (for tests and scripts that read a profile)."""
    return compose(name, read_default(root), root)


def composed_profile(params: Path) -> str | None:
    """The profile named by the header of a composed params file, None for the default."""
    first = params.read_text().split("\n", 1)[0] if params.is_file() else ""
    match = HEADER.match(first)
    return match.group(1) if match else None


def read_default(root: Path = ROOT, from_default: bool = False) -> dict:
    """The default profile: params.yaml while it carries no profile header; with `from_default`, the
    committed params.yaml (`git show HEAD:params.yaml`). Anything else is refused on one line."""
    params = root / "params.yaml"
    if from_default:
        shown = "HEAD:params.yaml"
        done = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=root, capture_output=True, text=True)
        if done.returncode != 0:
            raise ConfigError(f"{shown}: cannot read the committed default ({done.stderr.strip() or 'git failed'})")
        text = done.stdout
    else:
        shown = "params.yaml"
        try:
            text = params.read_text()
        except OSError as err:
            raise ConfigError(f"{shown}: cannot read the default ({err.strerror})") from None
    profile = HEADER.match(text.split("\n", 1)[0])
    if profile:
        hint = ("commit the default params.yaml" if from_default else
                "run with --from-default to compose over git's HEAD:params.yaml, or `git checkout params.yaml`")
        raise ConfigError(f"{shown}: already composed from profile {profile.group(1)} (its first line); "
                          f"profiles do not stack: {hint}")
    raw = yaml.safe_load(text)
    validate_params(raw, shown)
    return raw


class _NoAliases(yaml.SafeDumper):
    """Values shared between default and overlay are written out, not aliased (DVC expands every alias)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(name: str, raw: dict, from_default: bool = False) -> str:
    """params.yaml's text for profile `name`: the header line, then the parameters."""
    default = "git's HEAD:params.yaml" if from_default else "the default params.yaml"
    header = (f"# profile: {name} -- composed by `python -m pipeline.profiles {name}` from {default} and "
              f"profiles/{name}.yaml (the comments are there).\n"
              f"# Generated: edit the profile, not this file. Back to the default: git checkout params.yaml\n")
    return header + yaml.dump(raw, Dumper=_NoAliases, sort_keys=False, default_flow_style=None, width=110)


def write_params(name: str, root: Path = ROOT, from_default: bool = False) -> Path:
    """Compose profile `name` and replace root/params.yaml with it, atomically, once it validates."""
    read_overlay(name, root)  # an unknown profile is named before the default is looked at
    raw = compose(name, read_default(root, from_default), root)
    target = root / "params.yaml"
    fd, tmp = tempfile.mkstemp(prefix=".params.", suffix=".yaml", dir=root)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(render(name, raw, from_default))
            handle.flush()
            os.fsync(handle.fileno())
        load_params(tmp)  # what DVC and the stages will read: it parses and validates as written
        if yaml.safe_load(Path(tmp).read_text()) != raw:
            raise ConfigError(f"profiles/{name}.yaml: the written params.yaml does not read back as composed")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    from_default = "--from-default" in args
    names = [a for a in args if a != "--from-default"]
    if len(names) != 1 or names[0].startswith("-"):
        print(USAGE, file=sys.stderr)
        raise SystemExit(2)
    try:
        target = write_params(names[0], Path.cwd(), from_default)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"{target.name}: profile {names[0]} (then: dvc repro; back to the default: git checkout params.yaml)")


if __name__ == "__main__":
    main()
