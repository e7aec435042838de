"""The base of every stage's parameter model (``InferParams``, ``PseudoParams``, ``WarpParams``,
``RefineParams``): frozen pydantic models that reject unknown keys.

Why one base: the stage CLIs, ``params.yaml`` (``pipeline.params``) and library callers build
the same objects, and a bad value must read the same everywhere: ``<key>: <problem> (got
<value>; allowed: <range>)``. Constraints are declared on the fields (``Field(ge=0, le=1)``),
so the allowed range shown to users is the one that is enforced.

Direct construction (``PseudoParams(score_threshold=1.7)``) raises pydantic's
``ValidationError`` like any model; entry points that face users build through
:meth:`StageParams.validated`, which raises :class:`core.errors.InputError` instead.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError
from typing_extensions import Self

from core.errors import input_error_from_validation


def _fspath(v: Any) -> Any:
    return os.fspath(v) if isinstance(v, os.PathLike) else v


#: A file path kept as ``str`` (JSON-able, stable in reports), accepting ``Path`` objects too.
PathStr = Annotated[str, BeforeValidator(_fspath)]


class StageParams(BaseModel):
    """Frozen, unknown keys rejected; ``to_dict`` is the JSON form written into stage reports."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def validated(cls, values: Mapping[str, Any], where: str, *, prefix: str = "", hidden: Iterable[str] = (),
                  fix: str | None = None) -> Self:
        """``cls(**values)``, with every problem turned into ONE :class:`~core.errors.InputError`
        (see :func:`core.errors.input_error_from_validation` for ``prefix``/``hidden``)."""
        try:
            return cls.model_validate(dict(values))
        except ValidationError as exc:
            raise input_error_from_validation(exc, where, prefix=prefix, model=cls, hidden=hidden,
                                              fix=fix) from None

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied and validated again (``model_copy`` would skip validation)."""
        return type(self).model_validate({**dict(self), **changes})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (paths as strings, tuples as lists)."""
        return self.model_dump(mode="json")
