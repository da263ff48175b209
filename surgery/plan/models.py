"""The builder's part that reads `model` and `pretrained` statements into specs and checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import (
    ValidationError,
)

from surgery import catalog
from surgery.args import suggest as _suggest
from surgery.families import FAMILIES
from surgery.plan.common import (
    pydantic_msg,
    value_text,
)
from surgery.recipe import (
    Arg,
    LayersSum,
    ModelDecl,
    Name,
    Number,
    Pos,
    Str,
)
from surgery.spec import ModelSpec


class ModelsPart:
    """model / pretrained statements -> ModelSpecs and checkpoint paths."""

    def model(self, decl: ModelDecl) -> None:
        if decl.name in self.models:
            first = self.model_pos[decl.name]
            raise self.err(f"model {decl.name} is declared twice (first on line {first.line})", decl.name_pos)
        call = decl.family
        family = call.name
        if family not in FAMILIES:
            raise self.err(f"unknown model family {family!r}{_suggest(family, FAMILIES)}", call.pos)
        descriptor = FAMILIES[family]
        allowed = descriptor.args
        values: dict[str, Any] = {}
        where: dict[str, Pos] = {}
        for arg in call.args:
            if arg.key is None:
                raise self.err(f"model arguments need names, e.g. d_model={value_text(arg.value)}", arg.pos)
            key = arg.key
            if key not in allowed:
                alias = catalog.MODEL_ARG_ALIASES.get(key)
                hint = f"; did you mean {alias!r}?" if alias in allowed else _suggest(key, allowed)
                raise self.err(f"unknown {family} argument {key!r}{hint}", arg.pos)
            if key in values:
                raise self.err(f"argument {key} is given twice", arg.pos)
            values[key] = self._model_value(descriptor, key, arg)
            where[key] = arg.pos
        missing = [k for k in catalog.REQUIRED_MODEL_ARGS if k not in values]
        two_stacks = len(descriptor.stacks) == 2
        if missing:
            example = {"layers": "layers=6+6" if two_stacks else "layers=12", "d_model": "d_model=512", "heads": "heads=8", "d_ff": "d_ff=1024"}
            raise self.err(
                f"model {decl.name} needs {', '.join(missing)} (e.g. {', '.join(example[k] for k in missing)})", call.pos
            )
        if "kv_heads" in values and values["heads"] % values["kv_heads"]:
            raise self.err(f"kv_heads={values['kv_heads']} does not divide heads={values['heads']} "
                           "(grouped-query attention: each kv head serves heads/kv_heads query heads)", where["kv_heads"])
        d_model, heads = values["d_model"], values["heads"]
        if values.get("d_kv") is None and d_model % heads:
            hint = " (or give the head size with d_kv=)" if "d_kv" in allowed else ""
            raise self.err(f"heads={heads} does not divide d_model={d_model}{hint}", where["heads"])
        try:
            spec = ModelSpec.of(family, **values)
        except ValidationError as e:
            first = e.errors()[0]
            loc = str(first["loc"][0]) if first["loc"] else ""
            loc = {"decoder_layers": "layers", "head": "tie" if "tie" in allowed else "head"}.get(loc, loc)
            pos = where.get(loc, call.pos)
            raise self.err(f"model {decl.name}: {pydantic_msg(first)}", pos) from None
        self.models[decl.name] = spec
        self.model_pos[decl.name] = decl.name_pos

    def _model_value(self, descriptor, key: str, arg: Arg):
        v = arg.value
        info = descriptor.args[key]
        if info.kind == "layers":
            if len(descriptor.stacks) == 2:
                if isinstance(v, LayersSum):
                    return (v.encoder, v.decoder)
                raise self.err(f"{descriptor.name} depth is written encoder+decoder, e.g. layers=6+6", arg.pos)
            if isinstance(v, Number) and isinstance(v.value, int):
                return v.value
            raise self.err(f"{descriptor.name} depth is one whole number, e.g. layers=12", arg.pos)
        if info.kind == "int" and not (isinstance(v, Number) and isinstance(v.value, int)):
            raise self.err(f"{key} must be a whole number, got {value_text(v)}", v.pos)
        if info.kind == "bool" and not (isinstance(v, (Name, Str)) and v.value in ("true", "false")):
            raise self.err(f"{key} must be true or false, got {value_text(v)}", v.pos)
        return self._coerce(key, v, info)

    def known_model(self, name: str, pos: Pos) -> ModelSpec:
        if name not in self.models:
            if not self.models:
                raise self.err(f"unknown model {name}: declare it first, e.g. model {name} = t5(layers=6+6, d_model=512, heads=8, d_ff=1024)", pos)
            raise self.err(f"unknown model {name}{_suggest(name, self.models)}", pos)
        return self.models[name]

    # -- checkpoints ----------------------------------------------------------------------------
    def pretrained(self) -> None:
        base = Path(self.r.file).resolve().parent if not self.r.file.startswith("<") else Path.cwd()
        for decl in self.r.pretrained:
            self.known_model(decl.name, decl.name_pos)
            if decl.name in self.checkpoints:
                raise self.err(f"model {decl.name} already has a pretrained checkpoint (line {self.checkpoint_pos[decl.name].line})", decl.name_pos)
            if not decl.path.strip():
                raise self.err("the checkpoint path is empty", decl.path_pos)
            path = Path(decl.path).expanduser()
            self.checkpoints[decl.name] = str(path if path.is_absolute() else (base / path).resolve())
            self.checkpoint_pos[decl.name] = decl.name_pos

