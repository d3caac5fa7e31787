"""Declared pass options: a pass states each option once, as a field of a frozen dataclass.

```python
@register_pass
class SelectPass(Pass):
    @dataclass(frozen=True)
    class Options(PassOptions):
        ratio: float | None = None
        round_to: int = 1
        include: Any = option(None, record=False)  # not listed in the report

        def __post_init__(self) -> None:  # check (and normalise) the values
            if self.round_to < 1:
                raise UserError(f"--round-to must be >= 1, got {self.round_to}")
```

:class:`~npcompile.pipeline.Pass` builds the ``Options`` from the constructor's arguments (by
keyword, or by position in field order), exposes every field as an attribute of the pass
(``self.ratio``) and keeps the dataclass as ``self.config``; ``self.options`` (what the report
lists with the pass) is the recorded fields, in field order. The TOML name of an option is its
field name: :func:`option_names` is what ``instantiate`` checks pipeline-file keys against.
"""

from __future__ import annotations

import inspect
from dataclasses import MISSING, Field, field, fields, is_dataclass
from typing import Any

__all__ = ["PassOptions", "option", "option_names", "build_options", "recorded_options"]


class PassOptions:
    """Base of a pass's ``Options`` (a frozen dataclass); :meth:`_set` lets ``__post_init__``
    store a normalised value (``self._set(loss=self.loss.lower())``)."""

    def _set(self, **values: Any) -> None:
        for k, v in values.items():
            object.__setattr__(self, k, v)


def option(default: Any = MISSING, *, record: bool = True, default_factory: Any = MISSING,
           init: bool = True) -> Any:
    """A field of a pass's ``Options``; ``record=False``: not listed with the pass in the report
    (data sets, objects, options that do not change the result); ``init=False``: not an option but
    a value ``__post_init__`` derives from the options (``self._set(name=...)``)."""
    return field(default=default, default_factory=default_factory, init=init,
                 metadata={"record": record and init})


def _fields(options_cls: type) -> tuple[Field, ...]:
    if not is_dataclass(options_cls):
        raise TypeError(f"{options_cls.__qualname__} must be a dataclass")
    return fields(options_cls)


def _signature(options_cls: type) -> inspect.Signature:
    params = []
    for f in _fields(options_cls):
        if not f.init:
            continue
        default = f.default if f.default is not MISSING else (
            inspect.Parameter.empty if f.default_factory is MISSING else f.default_factory())
        params.append(inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default))
    return inspect.Signature(params)


def build_options(options_cls: type, owner: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``options_cls`` from constructor arguments; a wrong argument is a TypeError as Python's own
    (``SelectPass.__init__() got an unexpected keyword argument 'x'``)."""
    try:
        bound = _signature(options_cls).bind(*args, **kwargs)
    except TypeError as e:
        raise TypeError(f"{owner}.__init__() {e}") from None
    return options_cls(**bound.arguments)


def recorded_options(config: Any) -> dict[str, Any]:
    """The recorded fields of ``config`` (an ``Options`` instance), in field order."""
    return {f.name: getattr(config, f.name) for f in fields(config) if f.metadata.get("record", True)}


def option_names(cls: type) -> tuple[list[str], bool]:
    """The option names a pass class takes, and whether it takes any name (``**kwargs``): its
    ``Options`` fields, or the parameters of an old-style ``__init__``."""
    from npcompile.pipeline.core import Pass

    options_cls = getattr(cls, "Options", None)
    if options_cls is not None and cls.__init__ is Pass.__init__:
        return [f.name for f in _fields(options_cls) if f.init], False
    params = inspect.signature(cls.__init__).parameters
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    return [k for k in params if k not in ("self", "args", "kwargs")], accepts_any
