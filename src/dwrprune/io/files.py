"""Files, written atomically and read safely.

Every file dwrprune writes is a plain dict of tensors, numbers, strings, lists and dicts, so it
loads with ``torch.load(weights_only=True)``.  Writes are atomic (temporary file in the same
folder, fsync, ``os.replace``): a run killed mid-write leaves the previous file intact.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DwrpruneError, quote_error

if TYPE_CHECKING:
    from torch import nn

FORMAT = "dwrprune"
FORMAT_VERSION = 1


def atomic_write_bytes(path: str | os.PathLike, writer) -> None:
    """Call ``writer(fileobj)`` on a temporary file, then move it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_torch(path: str | os.PathLike, payload: dict) -> None:
    import torch  # here, not at import: the command line reads YAML without torch

    atomic_write_bytes(path, lambda f: torch.save(payload, f))


def save_json(path: str | os.PathLike, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def load_torch(path: str | os.PathLike) -> dict:
    """``torch.load(weights_only=True)`` with clear errors for missing or corrupt files."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise DwrpruneError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():
            # a file pickled outside torch.save (protocol != 2) makes torch warn before it
            # refuses or accepts it; the user gets our one line instead
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure here means "not a usable checkpoint"
        raise DwrpruneError(
            f"{path} is not a readable checkpoint (corrupt, truncated, or it holds pickled "
            f"objects that dwrprune never loads): {quote_error(e)}") from None
    if not isinstance(obj, dict):
        raise DwrpruneError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


def plain(obj: Any) -> Any:
    """``obj`` as plain JSON data (str subclasses such as torch's version become str)."""
    try:
        return json.loads(json.dumps(obj, default=str))
    except (TypeError, ValueError) as e:
        raise DwrpruneError(f"cannot store {type(obj).__name__} in a checkpoint: {e}") from None


def model_payload(model: nn.Module, spec: dict, meta: dict | None = None) -> dict:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "spec": plain(spec),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "meta": plain(meta or {})}


def _writable_parent(path: Path, what: str) -> None:
    """The nearest existing folder at or above ``path`` can be written in, else one error."""
    parent = next((q for q in [path, *path.parents] if q.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise DwrpruneError(f"cannot write {what} {path}: {parent} is not a writable folder")


def check_folder_writable(path: str | os.PathLike, what: str = "folder") -> Path:
    """``path`` is a folder, or can be made one, and can be written: else one clear error
    naming it.  Returns ``path``."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise DwrpruneError(f"--out {p} exists and is not a folder; a {what} must be a "
                            "directory (choose another path)")
    _writable_parent(p, what)
    return p


def output_file(path: str | os.PathLike, force: bool = False) -> Path:
    """An output file path that can be written: not an existing folder, inside a writable
    folder, and not an existing file unless ``force``.  Checked before any work."""
    out = Path(path)
    if out.is_dir():
        raise DwrpruneError(f"output {out} is a folder; give a file path (e.g. {out}/model.pt)")
    if out.exists() and not force:
        raise DwrpruneError(f"{out} exists; pass --force to overwrite it")
    _writable_parent(out.parent, "output")
    if out.exists() and not os.access(out, os.W_OK):
        raise DwrpruneError(f"cannot overwrite {out}: the file is read-only")
    return out


# ---------------------------------------------------------------------------- YAML, read safely
MAX_TEXT_FILE = 1_000_000  # bytes: an options or config file is a few KB
MAX_ALIASES = 100  # YAML aliases per file: enough for any config, too few for a "billion laughs"


def short(value: Any, limit: int = 200) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_text_file(path: str | os.PathLike, what: str, limit: int = MAX_TEXT_FILE) -> str:
    """The text of a small regular file, or one clear error: missing, not a regular file
    (``/dev/zero``, a folder, a pipe), larger than ``limit`` bytes, or not UTF-8."""
    import stat

    p = Path(path)
    try:
        st = p.stat()
    except OSError as e:
        raise DwrpruneError(f"cannot read {what} {p}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise DwrpruneError(f"{what} {p} is not a regular file")
    if st.st_size > limit:
        raise DwrpruneError(f"{what} {p} is {st.st_size} bytes; at most {limit} are read")
    try:
        with open(p, "rb") as f:
            data = f.read(limit + 1)
        return data.decode("utf-8")
    except OSError as e:
        raise DwrpruneError(f"cannot read {what} {p}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise DwrpruneError(f"{what} {p} is not UTF-8 text") from None


MAX_EXPANDED = 10_000  # values aliases may stand for, all together


def _node_size(node, memo: dict) -> int:
    """How many values a YAML node holds once its aliases are written out."""
    key = id(node)
    if key not in memo:
        memo[key] = 1  # a node that contains itself counts once
        value = node.value if isinstance(node.value, list) else []
        memo[key] = 1 + sum(_node_size(c, memo) if not isinstance(c, tuple) else
                            _node_size(c[0], memo) + _node_size(c[1], memo) for c in value)
    return memo[key]


def _strict_loader():
    import yaml

    class StrictLoader(yaml.SafeLoader):
        """Safe YAML that refuses duplicate keys and more than a few aliases."""

        aliases = 0
        expanded = 0  # the values the aliases stand for, counted as if written out

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                anchored = self.anchors.get(self.peek_event().anchor)
                self.expanded += _node_size(anchored, {}) if anchored is not None else 1
                if self.aliases > MAX_ALIASES or self.expanded > MAX_EXPANDED:
                    raise yaml.YAMLError(f"its aliases (*name) stand for more than "
                                         f"{MAX_EXPANDED} values; write the values out")
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    dup = key in seen
                except TypeError:  # an unhashable key: SafeLoader's own error follows
                    dup = False
                if dup:
                    raise yaml.YAMLError(f"key {short(key, 60)} appears twice (line "
                                         f"{key_node.start_mark.line + 1}); keep one")
                seen.add(key)
            return super().construct_mapping(node, deep)

    return StrictLoader


def read_yaml(path: str | os.PathLike, what: str = "config") -> Any:
    """A small YAML file read safely: no tags, no duplicate keys, few aliases, bounded size
    and nesting; every problem is one :class:`DwrpruneError` naming the file."""
    import yaml

    text = read_text_file(path, what)
    try:
        return yaml.load(text, Loader=_strict_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise DwrpruneError(f"{what} {path} is not valid YAML: "
                            f"{str(e).splitlines()[0][:200]}") from None
    except RecursionError:
        raise DwrpruneError(f"{what} {path} nests too deeply") from None


def read_json(path: str | os.PathLike, what: str, fix: str, limit: int = 50_000_000) -> Any:
    """A JSON file dwrprune wrote, read with one clear error (missing, unreadable, empty,
    truncated) that says ``fix`` (usually: which stage to re-run)."""
    p = Path(path)
    if not p.exists():
        raise DwrpruneError(f"{p} does not exist: no {what}; {fix}")
    text = read_text_file(p, what, limit)
    try:
        return json.loads(text)
    except ValueError as e:
        raise DwrpruneError(f"{p} is not a readable {what} ({str(e)[:120]}); {fix}") from None
