"""The builder's part that reads `model` and `pretrained` statements into specs and checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import (
    ValidationError,
)

from surgery import catalog
from surgery.args import suggest as _suggest
from surgery.checkpoints import folder_problem, read_config, resolve_hub, tokenizer_size
from surgery.errors import SurgeryError
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
        self.model_arg_pos[decl.name] = where

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
        for decl in self.r.pretrained:
            self.known_model(decl.name, decl.name_pos)
            if decl.name in self.checkpoints:
                raise self.err(f"model {decl.name} already has a pretrained checkpoint (line {self.checkpoint_pos[decl.name].line})", decl.name_pos)
            if decl.source is not None and not decl.hub:
                raise self.err(f'a checkpoint is a quoted path or hf("org/name"), not {decl.source.name}(...)', decl.path_pos)
            if not decl.path.strip():
                raise self.err('hf takes the model id as one quoted string: hf("org/name")' if decl.hub
                               else "the checkpoint path is empty", decl.path_pos)
            self.checkpoint_pos[decl.name] = decl.name_pos
            if decl.hub:
                try:
                    folder = resolve_hub(decl.path)
                except SurgeryError as err:
                    self.missing(str(err), decl.path_pos)
                    self.checkpoints[decl.name] = f"hf:{decl.path}"
                    continue
            else:
                path = Path(decl.path).expanduser()
                folder = path if path.is_absolute() else (self.base_dir / path).resolve()
            self.checkpoints[decl.name] = str(folder)
            problem = folder_problem(folder)
            if problem:
                self.missing(problem, decl.path_pos)
            else:
                self._check_checkpoint(decl, folder)

    def _check_checkpoint(self, decl, folder: Path) -> None:
        """The declared model against the checkpoint it starts from: same family and shape; a
        vocabulary left out of the recipe is the checkpoint's; the tokenizer fits the embeddings."""
        name = decl.name
        declared, where = self.models[name], self.model_arg_pos[name]
        try:
            actual = ModelSpec.from_hf_config(read_config(folder))
        except (ValueError, KeyError) as err:
            raise self.err(f"{folder}: {err}", decl.path_pos) from None
        if actual.family != declared.family:
            raise self.err(f"model {name} is {declared.family}, but its checkpoint is {actual.family} ({folder})",
                           self.model_pos[name])
        if "vocab" not in where:
            # one recipe, one tokenizer: every model that leaves vocab out takes the checkpoint's
            for other, spec in self.models.items():
                if "vocab" not in self.model_arg_pos[other]:
                    self.models[other] = spec.model_copy(update={"vocab": actual.vocab})
            declared = self.models[name]
        for key in ("layers", "decoder_layers", "d_model", "heads", "d_ff", "vocab", "head_dim", "n_kv_heads"):
            a, b = getattr(declared, key), getattr(actual, key)
            if a != b:
                shown = {"head_dim": "d_kv", "n_kv_heads": "kv_heads", "decoder_layers": "layers"}.get(key, key)
                raise self.err(f"model {name} says {shown}={a}, but its checkpoint has {b} ({folder}); "
                               f"declare the checkpoint's size{' (or leave vocab out)' if key == 'vocab' else ''}",
                               where.get(shown, self.model_pos[name]))
        size = tokenizer_size(folder)
        if size is not None and size > actual.vocab:
            raise self.err(f"the tokenizer in {folder} makes {size} token ids but the checkpoint embeds {actual.vocab}: "
                           "weights and tokenizer do not belong together", decl.path_pos)
