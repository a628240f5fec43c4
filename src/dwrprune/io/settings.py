"""One "same settings?" check for everything that resumes: the sample store, the run folder's
final stage, the benchmark's results folder and a training checkpoint all refuse to continue
work that was started with other settings, with the same rule and the same message shape."""

from __future__ import annotations

from ..errors import DwrpruneError

CHAIN_KEYS = ("depth_steps", "width_steps", "resolution_steps")


def extends(longer, shorter) -> bool:
    """``longer`` is the chain ``shorter`` continued further down (more pruning): the same
    steps, then smaller ones."""
    if not (isinstance(longer, list) and isinstance(shorter, list)) or \
            len(longer) <= len(shorter) or longer[:len(shorter)] != shorter:
        return False
    return not shorter or all(v < shorter[-1] for v in longer[len(shorter):])


def differing(old: dict, new: dict, defaults: dict | None = None) -> list[str]:
    """Keys whose values differ.  A key an older record lacks counts as equal when the new
    value is its default (older code behaved that way).  A chain of pruning steps that
    continues the other's (``extends``) is the same collection, extended."""
    old = {**{k: v for k, v in (defaults or {}).items() if k in new and k not in old}, **old}
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and not (
        k in CHAIN_KEYS and (extends(old.get(k), new.get(k)) or extends(new.get(k),
                                                                        old.get(k)))))


def check_same_settings(old: dict | None, new: dict, where: str, what: str = "collected",
                        defaults: dict | None = None, hint: str = "use a new --out folder"
                        ) -> None:
    """Refuse to resume ``where`` (started with ``old``) with ``new``, naming what differs."""
    if old is None or old == new:
        return
    diff = differing(old, new, defaults)
    if diff:
        raise DwrpruneError(f"{where} was {what} with different settings (differs in: "
                            f"{', '.join(_named(k, old, new, defaults) for k in diff)}); "
                            f"resume with the same settings or {hint}")


def _named(key: str, old: dict, new: dict, defaults: dict | None) -> str:
    """``precision (was 'bf16', now 'fp32')`` where both values are short, else the key."""
    was = old.get(key, (defaults or {}).get(key))
    if isinstance(was, dict) or isinstance(new.get(key), dict) or \
            len(repr(was)) + len(repr(new.get(key))) > 60:
        return key
    return f"{key} (was {was!r}, now {new.get(key)!r})"
