"""Recipe text -> typed AST. The syntax lives in grammars/grow.lark; this module only turns
Lark's tree into small frozen dataclasses that remember where in the file they came from, and
turns Lark's parse errors into sentences with a `FILE:LINE:COL` and a caret.

Nothing here knows what a name means (which ops or settings exist): that is surgery/plan.py's
job, so that it can say "did you mean" instead of a bare syntax error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Union

from lark import (
    Lark,
    Token,
    Transformer,
    UnexpectedCharacters,
    UnexpectedInput,
    UnexpectedToken,
    v_args,
)

from surgery.errors import RecipeError, SurgeryError

GRAMMAR_PATH = Path(__file__).resolve().parent.parent / "grammars" / "grow.lark"


# ---- AST ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pos:
    line: int
    column: int


@dataclass(frozen=True)
class Number:
    value: int | float
    pos: Pos


UNITS = {"ep": "ep", "epoch": "ep", "epochs": "ep", "step": "steps", "steps": "steps", "%": "%"}


@dataclass(frozen=True)
class Quantity:
    """An amount with a unit as written: unit is "ep", "steps" or "%"."""

    value: float
    unit: str
    pos: Pos

    def text(self) -> str:
        v = int(self.value) if float(self.value).is_integer() else self.value
        return f"{v}{self.unit}"


@dataclass(frozen=True)
class LayersSum:
    encoder: int
    decoder: int
    pos: Pos


@dataclass(frozen=True)
class Str:
    value: str
    pos: Pos


@dataclass(frozen=True)
class Name:
    value: str
    pos: Pos


@dataclass(frozen=True)
class Arg:
    """`key=value` or a positional value (key None). pos is where the argument starts."""

    key: str | None
    value: "Value"
    pos: Pos


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple[Arg, ...]
    pos: Pos


Value = Union[Number, Quantity, LayersSum, Str, Name, Call]


@dataclass(frozen=True)
class ModelDecl:
    name: str
    name_pos: Pos
    family: Call  # t5(layers=..., ...)
    pos: Pos


@dataclass(frozen=True)
class PretrainedDecl:
    name: str
    name_pos: Pos
    path: str
    path_pos: Pos
    pos: Pos
    hub: bool = False  # hf("org/name"): a model id in the local Hugging Face cache
    source: "Call | None" = None  # the call as written, when not a plain string

@dataclass(frozen=True)
class LayerItem:
    """`start`, `start..end` (inclusive) or either with `xN`."""

    start: int
    end: int
    repeat: int
    pos: Pos

    def indices(self) -> list[int]:
        step = 1 if self.end >= self.start else -1
        return list(range(self.start, self.end + step, step)) * self.repeat


@dataclass(frozen=True)
class OpRef:
    """One op of the chain as written: `init-d`, `a@2ep`, `d(select=interleave)`, `d[0..5 x4]`."""

    name: str  # without the init- prefix
    init: bool
    args: tuple[Arg, ...]
    layers: tuple[tuple[LayerItem, ...], ...] | None  # one list per stack
    layers_pos: Pos | None
    at: Quantity | None
    pos: Pos

    @property
    def written(self) -> str:
        return ("init-" if self.init else "") + self.name


@dataclass(frozen=True)
class Step:
    op: OpRef
    model: str
    model_pos: Pos


@dataclass(frozen=True)
class Chain:
    first: str
    first_pos: Pos
    steps: tuple[Step, ...]
    pos: Pos


@dataclass(frozen=True)
class Until:
    metric: str
    compare: str
    value: float
    pos: Pos
    value_pos: Pos


@dataclass(frozen=True)
class Clause:
    """A train clause: kind is "on", "objective", "optimizer", "until" or "setting"."""

    kind: str
    key: str  # the setting's name, or the clause keyword
    value: Value | Until
    pos: Pos


@dataclass(frozen=True)
class TrainDecl:
    model: str | None
    model_pos: Pos | None
    budget: Quantity
    clauses: tuple[Clause, ...]
    pos: Pos


@dataclass(frozen=True)
class TaskDecl:
    name: str
    args: tuple[Arg, ...]
    pos: Pos


@dataclass(frozen=True)
class FinetuneDecl:
    tasks: tuple[TaskDecl, ...]
    pos: Pos


Statement = Union[ModelDecl, PretrainedDecl, Chain, TrainDecl, FinetuneDecl]


@dataclass(frozen=True)
class Recipe:
    """A parsed recipe: its statements in file order, plus the text for error messages."""

    file: str
    text: str
    statements: tuple[Statement, ...] = field(repr=False)

    @property
    def models(self) -> list[ModelDecl]:
        return [s for s in self.statements if isinstance(s, ModelDecl)]

    @property
    def pretrained(self) -> list[PretrainedDecl]:
        return [s for s in self.statements if isinstance(s, PretrainedDecl)]

    @property
    def chains(self) -> list[Chain]:
        return [s for s in self.statements if isinstance(s, Chain)]

    @property
    def trains(self) -> list[TrainDecl]:
        return [s for s in self.statements if isinstance(s, TrainDecl)]

    @property
    def finetunes(self) -> list[FinetuneDecl]:
        return [s for s in self.statements if isinstance(s, FinetuneDecl)]

    @property
    def name(self) -> str:
        return Path(self.file).stem

    def error(self, message: str, pos: Pos | None) -> RecipeError:
        """A RecipeError pointing at pos (or at the file's start when there is no place)."""
        line, column = (pos.line, pos.column) if pos else (1, 1)
        return RecipeError(message, file=self.file, line=line, column=column, source_line=self.source_line(line))

    def source_line(self, line: int) -> str:
        lines = self.text.splitlines()
        return lines[line - 1] if 0 < line <= len(lines) else ""


# ---- tree -> AST ----------------------------------------------------------------------------
def _pos(item) -> Pos:
    if isinstance(item, Token):
        return Pos(item.line, item.column)
    return Pos(item.line, item.column)  # lark Meta


def _value_pos(value) -> Pos:
    return value.pos


@v_args(meta=True)
class _ToAst(Transformer):
    def start(self, meta, children):
        return tuple(children)

    # values
    def number(self, meta, children):
        tok = children[0]
        text = str(tok)
        value = int(text) if tok.type == "INT" else float(text)
        return Number(value, _pos(tok))

    def quantity(self, meta, children):
        tok = children[0]
        text = str(tok)
        unit = next(u for u in sorted(UNITS, key=len, reverse=True) if text.endswith(u))
        return Quantity(float(text[: -len(unit)]), UNITS[unit], _pos(tok))

    def layers_sum(self, meta, children):
        return LayersSum(int(children[0]), int(children[1]), _pos(meta))

    def string(self, meta, children):
        tok = children[0]
        return Str(_unquote(str(tok)), _pos(tok))

    def name(self, meta, children):
        tok = children[0]
        return Name(str(tok), _pos(tok))

    def kwarg(self, meta, children):
        key, value = children
        return Arg(str(key), value, _pos(key))

    def args(self, meta, children):
        out = []
        for child in children:
            if child is None:  # the empty `()`
                continue
            out.append(child if isinstance(child, Arg) else Arg(None, child, _value_pos(child)))
        return tuple(out)

    def call(self, meta, children):
        name, args = children
        return Call(str(name), args, _pos(name))

    # statements
    def model_decl(self, meta, children):
        name, family = children
        return ModelDecl(str(name), _pos(name), family, _pos(meta))

    def pretrained_decl(self, meta, children):
        name, path = children
        if isinstance(path, Call):  # hf("org/name"); the builder checks the call
            first = path.args[0].value if path.args else None
            text = first.value if isinstance(first, Str) else ""
            return PretrainedDecl(str(name), _pos(name), text, path.pos, _pos(meta), hub=path.name == "hf", source=path)
        return PretrainedDecl(str(name), _pos(name), _unquote(str(path)), _pos(path), _pos(meta))

    def layer_item(self, meta, children):
        start = int(children[0])
        end = start
        repeat = 1
        for child in children[1:]:
            if child.type == "REPEAT":
                repeat = int(str(child)[1:].strip())
            else:
                end = int(child)
        return LayerItem(start, end, repeat, _pos(meta))

    def stack_layers(self, meta, children):
        return tuple(children)

    def layer_list(self, meta, children):
        return ("layers", tuple(children), _pos(meta))

    def schedule(self, meta, children):
        return ("at", children[0])

    def op(self, meta, children):
        tok = children[0]
        text = str(tok)
        init = text.startswith("init-")
        args: tuple[Arg, ...] = ()
        layers = layers_pos = at = None
        for child in children[1:]:
            if isinstance(child, tuple) and child and child[0] == "layers":
                layers, layers_pos = child[1], child[2]
            elif isinstance(child, tuple) and child and child[0] == "at":
                at = child[1]
            else:
                args = child
        return OpRef(text[5:] if init else text, init, args, layers, layers_pos, at, _pos(tok))

    def step(self, meta, children):
        op, model = children
        return Step(op, str(model), _pos(model))

    def grow_decl(self, meta, children):
        first, *steps = children
        return Chain(str(first), _pos(first), tuple(steps), _pos(meta))

    def corpus_clause(self, meta, children):
        value = children[0]
        if isinstance(value, Token):
            value = Str(_unquote(str(value)), _pos(value))
        return Clause("on", "on", value, _pos(meta))

    def objective_clause(self, meta, children):
        return Clause("objective", "objective", _call_or_name(children[0]), _pos(meta))

    def optimizer_clause(self, meta, children):
        return Clause("optimizer", "optimizer", _call_or_name(children[0]), _pos(meta))

    def until_clause(self, meta, children):
        metric, compare, number = children
        until = Until(str(metric), str(compare), float(number.value), _pos(metric), number.pos)
        return Clause("until", "until", until, _pos(meta))

    def setting(self, meta, children):
        key, value = children
        return Clause("setting", str(key), value, _pos(key))

    def train_decl(self, meta, children):
        model = model_pos = None
        rest = list(children)
        if isinstance(rest[0], Token):
            model, model_pos = str(rest[0]), _pos(rest[0])
            rest = rest[1:]
        budget, *clauses = rest
        return TrainDecl(model, model_pos, budget, tuple(clauses), _pos(meta))

    def task(self, meta, children):
        name = children[0]
        args = children[1] if len(children) > 1 else ()
        return TaskDecl(str(name), args, _pos(name))

    def finetune_decl(self, meta, children):
        return FinetuneDecl(tuple(children), _pos(meta))


def _call_or_name(value) -> Call:
    if isinstance(value, Token):
        return Call(str(value), (), _pos(value))
    return value


def _unquote(text: str) -> str:
    body = text[1:-1]
    return body.encode("latin-1", "backslashreplace").decode("unicode_escape") if "\\" in body else body


# ---- parsing --------------------------------------------------------------------------------
@cache
def parser() -> Lark:
    """The recipe parser, built once per process (LALR builds its tables on construction)."""
    return Lark(GRAMMAR_PATH.read_text(encoding="utf-8"), parser="lalr", propagate_positions=True, maybe_placeholders=True)


def parse_recipe(text: str, file: str = "<recipe>") -> Recipe:
    """Parse recipe text; a syntax error raises RecipeError at its place."""
    recipe = Recipe(file=file, text=text, statements=())
    try:
        tree = parser().parse(text)
    except UnexpectedInput as err:
        raise _syntax_error(recipe, err) from None
    statements = _ToAst().transform(tree)
    return Recipe(file=file, text=text, statements=statements)


def load_recipe(path: str | Path) -> Recipe:
    """Read and parse a .grow file. Raises RecipeError (bad syntax) or SurgeryError (unreadable)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SurgeryError(f"no such recipe: {path}") from None
    except IsADirectoryError:
        raise SurgeryError(f"{path} is a folder; give a .grow recipe file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SurgeryError(f"cannot read recipe {path}: {err}") from None
    return parse_recipe(text, file=str(path))


# ---- syntax errors in words -----------------------------------------------------------------
# Common mistakes, each shown by a few wrong snippets; lark's match_examples finds the one whose
# parser state matches the user's error. Order matters only for ties.
COMMON_MISTAKES: dict[str, list[str]] = {
    "a point needs a unit right after the number: @2ep, @28000steps or @40%": [
        "grow T d@2 S",
        "grow T d@2 ep S",
        "grow T d@ S",
        "grow T d@two S",
    ],
    "the training budget needs a unit right after the number: train 5ep or train 28000steps": [
        "train 5 on corpus(\"x\")",
        "train 5 ep",
        "train on corpus(\"x\")",
        "train B 5",
        "train B",
        "train",
    ],
    "a model declaration reads `model NAME = FAMILY(arg=value, ...)`": [
        "model T t5(layers=6+6)",
        "model T = t5 layers=6+6",
        "model = t5(layers=6+6)",
        "model T = ",
        "model T",
    ],
    "arguments are written name=value, separated by commas": [
        "model T = t5(layers: 6+6)",
        "model T = t5(layers=6+6 d_model=512)",
        "model T = t5(layers=6+6, d_model 512)",
        "grow T d(select interleave) S",
        "finetune klue-nli(epochs 3)",
        "train 5ep optimizer adamw(lr 1e-3)",
    ],
    "t5 depth is written encoder+decoder, e.g. layers=6+6": [
        "model T = t5(layers=6+)",
        "model T = t5(layers=6 + d_model)",
    ],
    "the chain must end with a model: grow M0 op M1 op M2 ...": [
        "grow T d@1ep S a@2ep train 5ep",
        "grow T d@1ep train 5ep",
        "grow T d@1ep",
        "grow T d",
        "grow",
    ],
    "a checkpoint path is a quoted string: pretrained T = \"runs/T/final\"": [
        "pretrained T = runs/T/final",
        "pretrained T runs",
        "pretrained T \"x\"",
        "pretrained T = 3",
    ],
    "a stop rule reads `until val_loss <= NUMBER`": [
        "train 5ep until val_loss 1.0",
        "train 5ep until val_loss = 1.0",
        "train 5ep until val_loss >= 1.0",
        "train 5ep until 1.0",
        "train 5ep until val_loss <= low",
    ],
    "a train setting reads name=value, e.g. batch_size=16": [
        "train 5ep batch_size 16",
        "train 5ep batch_size=",
        "train 5ep seed",
    ],
    "the corpus is corpus(\"name\") or a quoted path: on corpus(\"ko-pretrain\")": [
        "train 5ep on ko-pretrain",
        "train 5ep on 3",
        "train 5ep on",
    ],
    "finetune lists task names separated by commas: finetune klue-nli, news-summ": [
        "finetune",
        "finetune klue-nli korquad-ext",
        "finetune klue-nli,",
        "finetune \"klue-nli\"",
    ],
    "a layer list holds layer indices and ranges, e.g. d[0..5 x2] or d[0..5 x2 + 0..5 x2]": [
        "grow T d[] S",
        "grow T d[0..] S",
        "grow T d[a] S",
        "grow T d[0..5 x] S",
        "grow T d[0..5 * 2] S",
        "grow T d[0-5] S",
    ],
}

# How terminals read in "expected ..." lists.
_TERMINAL_WORDS = {
    "NAME": "a name",
    "INT": "a whole number",
    "FLOAT": "a number",
    "QUANTITY": "an amount with a unit (5ep, 1000steps, 40%)",
    "STRING": 'a quoted string ("...")',
    "REPEAT": "a repeat count (x2)",
    "COMPARE": "<= or <",
    "$END": "the end of the recipe",
}


def _describe_terminal(name: str) -> str:
    if name in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[name]
    try:
        pattern = parser().get_terminal(name).pattern
    except KeyError:
        return name
    if pattern.type == "str":
        return f"'{pattern.value}'"
    return name.lower()


def _describe_token(token: Token) -> str:
    if token.type == "$END":
        return "end of the recipe"
    words = {"NAME": "name", "INT": "number", "FLOAT": "number", "QUANTITY": "amount", "STRING": "string"}
    kind = words.get(token.type)
    return f"{kind} '{token}'" if kind else f"'{token}'"


@cache
def _mistake_states() -> list[tuple[tuple, str, str]]:
    """(parser position, accepted terminals, token type, hint) of every example mistake."""
    out = []
    for hint, examples in COMMON_MISTAKES.items():
        for example in examples:
            try:
                parser().parse(example)
            except UnexpectedInput as err:
                out.append((_state_key(err), _token_type(err), hint))
    return out


def _state_key(err: UnexpectedInput):
    # Like lark's match_examples, but keyed on the LALR state alone: lark also compares stack
    # depth, which differs between a mistake in the first statement and the same one later.
    state = getattr(err, "state", None)
    position = getattr(state, "position", None)
    accepts = frozenset(getattr(err, "accepts", None) or getattr(err, "allowed", None) or ())
    return (type(err).__name__, position, accepts)


def _token_type(err: UnexpectedInput) -> str | None:
    token = getattr(err, "token", None)
    return token.type if token is not None else None


def _match_mistake(err: UnexpectedInput) -> str | None:
    key, token_type = _state_key(err), _token_type(err)
    if key[1] is None:
        return None
    loose = None
    for example_key, example_token, hint in _mistake_states():
        if example_key == key:
            if example_token == token_type:
                return hint
            loose = loose or hint
    return loose


def _syntax_error(recipe: Recipe, err: UnexpectedInput) -> RecipeError:
    line, column = max(err.line, 1) if err.line is not None else 1, max(err.column, 1) if err.column is not None else 1
    if isinstance(err, UnexpectedToken) and err.token.type == "$END":
        # point just past the last text, where something is missing
        lines = recipe.text.rstrip().splitlines() or [""]
        line, column = len(lines), len(lines[-1]) + 1
    hint = _match_mistake(err)
    token = getattr(err, "token", None)
    if token is not None and token.type == "NAME" and re.fullmatch(r"x\d+", str(token)):
        hint = "write t5 depth as encoder+decoder (layers=6+6); xN repeats belong in a layer list, d[0..5 x2]"
    if isinstance(err, UnexpectedCharacters):
        char = recipe.text[err.pos_in_stream] if err.pos_in_stream < len(recipe.text) else "?"
        what = f"unexpected character {char!r}"
        expected = sorted(err.allowed or ())
    elif isinstance(err, UnexpectedToken):
        what = f"unexpected {_describe_token(err.token)}"
        expected = sorted(err.accepts or err.expected or ())
    else:
        what = "unexpected end of the recipe"
        expected = sorted(getattr(err, "expected", ()) or ())
    words = sorted({_describe_terminal(t) for t in expected})
    wanted = ""
    if words:
        wanted = "; expected " + (words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1])
    message = what + wanted
    if hint:
        message = f"{what}: {hint}"
    return recipe.error(message, Pos(line, column))
