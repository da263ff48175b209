"""The builder's part that reads the growth chain: op arguments, the growth and compression rules, stages."""

from __future__ import annotations

from typing import Any

from surgery import catalog
from surgery.args import suggest as _suggest
from surgery.growth_rules import growth_problem, same_width
from surgery.plan.common import (
    compare_points,
    value_text,
)
from surgery.plan.types import GrowStage, Point, TrainSettings, TrainStage
from surgery.recipe import (
    Chain,
    Name,
    Number,
    OpRef,
    Pos,
    Str,
    TrainDecl,
)
from surgery.spec import ModelSpec


class ChainPart:
    """the grow chain -> ordered stages, every op checked against its two models."""

    def op_args(self, op: OpRef, info: catalog.OpInfo | None = None) -> dict[str, Any]:
        info = info or catalog.OPS[op.name]
        args: dict[str, Any] = {}
        for arg in op.args:
            key = arg.key
            if key is None:
                # a bare value names its argument by the choice it is: d(identity) = d(init=identity)
                text = arg.value.value if isinstance(arg.value, (Name, Str)) else None
                owners = [k for k, a in info.args.items() if text in a.choices]
                if len(owners) != 1:
                    choices = sorted({c for a in info.args.values() for c in a.choices})
                    hint = _suggest(text, choices) if text and choices else ""
                    raise self.err(f"{op.name} has no option {value_text(arg.value)!r}{hint}; write name=value ({', '.join(info.args)})", arg.pos)
                key = owners[0]
            elif key not in info.args:
                known = list(info.args)
                raise self.err(f"op {op.name} has no argument {key!r}{_suggest(key, known) if known else ' (it takes none)'}", arg.pos)
            if key in args:
                raise self.err(f"argument {key} is given twice", arg.pos)
            args[key] = self._coerce(key, arg.value, info.args[key])
            if info.args[key].kind == "float":
                args[key] = float(args[key])
        for key, spec in info.args.items():
            if spec.default is not None and key not in args:
                args[key] = spec.default
        return args

    def check_compress(self, op: OpRef, src_name: str, dst_name: str, src_pos: Pos, dst_pos: Pos) -> dict[str, Any]:
        """Exact shape checks of factorize / share / distil; their resolved arguments."""
        info = catalog.COMPRESS_OPS[op.name]
        if op.layers is not None:
            raise self.err(f"{op.name} takes no layer list", op.layers_pos)
        src, dst = self.known_model(src_name, src_pos), self.known_model(dst_name, dst_pos)
        where = f"{src_name} {op.written} {dst_name}"
        # factorize(128): a bare number is the rank
        args_in = list(op.args)
        args: dict[str, Any] = {}
        if op.name == "factorize" and args_in and args_in[0].key is None and isinstance(args_in[0].value, Number):
            args["rank"] = args_in.pop(0).value.value
        import dataclasses

        args.update(self.op_args(dataclasses.replace(op, args=tuple(args_in)), info))
        if op.name == "moe":
            from surgery.moe import moe_problem

            problem = moe_problem(src, dst, args)
            if problem is not None:
                raise self.err(f"{where}: {problem[0]}", dst_pos if problem[1] == "dst" else op.pos)
            return args
        same = ("d_model", "heads", "d_ff", "vocab", "max_positions")
        if op.name != "distil" and (src.family not in info.sources or dst.family not in info.targets):
            raise self.err(f"{where}: {op.name} turns a {' (or '.join(info.sources)}{')' * (len(info.sources) - 1)} model "
                           f"into an {' or '.join(info.targets)} model; {dst_name} is {dst.family}", dst_pos)
        if op.name in ("factorize", "share"):
            for key in ("layers",) + same:
                if getattr(src, key) != getattr(dst, key):
                    raise self.err(f"{where}: {op.name} keeps {key} ({getattr(src, key)} -> {getattr(dst, key)}); change it with a separate op", dst_pos)
        if op.name == "factorize":
            if src.embedding is not None:
                raise self.err(f"{where}: {src_name} is already factorized (embedding={src.embedding})", op.pos)
            if dst.share != src.share:
                raise self.err(f"{where}: factorize keeps the layers ({src.share} -> {dst.share} sharing); use share for that", dst_pos)
            if "rank" in args and args["rank"] != dst.embedding_size:
                raise self.err(f"{where}: factorize({args['rank']}) but {dst_name} has embedding={dst.embedding_size}", op.pos)
            args["rank"] = dst.embedding_size
        if op.name == "share":
            # what= left out: what the target shares (share=all when it shares nothing)
            written = any(a.key == "what" or (a.key is None and isinstance(a.value, (Name, Str))
                                              and a.value.value in info.args["what"].choices) for a in op.args)
            if not written and dst.share != "none":
                args["what"] = dst.share
            if src.embedding_size != dst.embedding_size:
                raise self.err(f"{where}: share keeps the embedding size ({src.embedding_size} -> {dst.embedding_size}); factorize first", dst_pos)
            if dst.share != args["what"]:
                raise self.err(f"{where}: share({args['what']}) needs a target with share={args['what']}; {dst_name} has share={dst.share}", dst_pos)
            src_share = src.share
            if src_share != "none" and not (args["what"] == "all" and src_share in ("attention", "ffn")):
                raise self.err(f"{where}: share needs an unshared source ({src_name} has share={src_share})", src_pos)
        if op.name == "distil":
            args = self.check_distil(op, args, src, dst, where, dst_pos)
        return args

    def check_distil(self, op: OpRef, args: dict[str, Any], src, dst, where: str, dst_pos: Pos) -> dict[str, Any]:
        """distil: the student's shape against the teacher's for the chosen style, and the style's
        arguments (another style's argument is a mistake, not silently ignored)."""
        style = args["style"]
        info = catalog.COMPRESS_OPS["distil"]
        given = {}
        for arg in op.args:
            key = arg.key or next((k for k, a in info.args.items() if isinstance(arg.value, (Name, Str)) and arg.value.value in a.choices), None)
            given[key] = arg.pos
        reads = catalog.DISTIL_STYLE_ARGS[style]
        for key, pos in given.items():
            if key not in reads:
                owners = [s for s, keys in catalog.DISTIL_STYLE_ARGS.items() if key in keys]
                raise self.err(f"distil(style={style}) takes no {key} (that is {' and '.join(owners)}'s); "
                               f"it reads {', '.join(k for k in reads if k != 'style')}", pos)
        if src.family not in info.sources or dst.family not in info.targets:
            raise self.err(f"{where}: distil works between {' or '.join(info.sources)} models", dst_pos)
        out = {k: v for k, v in args.items() if k in reads}
        for key, value in catalog.DISTIL_STYLE_DEFAULTS[style].items():
            if key not in given:
                out[key] = value
        if style == "distilbert":
            for key in ("d_model", "heads", "d_ff", "vocab", "max_positions"):
                if getattr(src, key) != getattr(dst, key):
                    raise self.err(f"{where}: distil(style=distilbert) keeps the width ({key} {getattr(src, key)} -> {getattr(dst, key)}): the student starts from the teacher's layers and the cosine loss compares hidden states; style=tinybert or tutor distil into a narrower student", dst_pos)
            if dst.layers >= src.layers:
                raise self.err(f"{where}: the student must have fewer layers than the teacher ({dst.layers} >= {src.layers})", dst_pos)
            return out
        for key in ("heads", "vocab", "max_positions"):
            if getattr(src, key) != getattr(dst, key):
                raise self.err(f"{where}: distil(style={style}) keeps {key} ({getattr(src, key)} -> {getattr(dst, key)}): "
                               "the attention loss compares the scores head by head, the logits token by token", dst_pos)
        for key in ("layers", "d_model", "d_ff"):
            if getattr(dst, key) > getattr(src, key):
                raise self.err(f"{where}: the student's {key} ({getattr(dst, key)}) exceeds the teacher's ({getattr(src, key)})", dst_pos)
        if all(getattr(dst, k) == getattr(src, k) for k in ("layers", "d_model", "d_ff")):
            raise self.err(f"{where}: the student is the teacher's size; make it shallower or narrower", dst_pos)
        return out

    def check_growth(self, op: OpRef, src_name: str, dst_name: str, src_pos: Pos, dst_pos: Pos) -> dict[str, Any]:
        """Check that op can turn src into dst; return its resolved arguments."""
        if op.name in catalog.COMPRESS_OPS:
            return self.check_compress(op, src_name, dst_name, src_pos, dst_pos)
        if op.name not in catalog.OPS:
            written = op.written
            raise self.err(f"unknown op {written!r}{_suggest(op.name, catalog.OPS)}", op.pos)
        info = catalog.OPS[op.name]
        src, dst = self.known_model(src_name, src_pos), self.known_model(dst_name, dst_pos)
        args = self.op_args(op)
        where = f"{src_name} {op.written} {dst_name}"
        depth, width = info.depth, info.width is not None
        if info.flexible:  # ligo, msg: whichever of depth and width the models differ in
            depth, width = src.stacks != dst.stacks, not same_width(src, dst)
        problem = growth_problem(src, dst, depth=depth, width=width, op=op.name, names=(src_name, dst_name))
        if problem is not None:
            message, at = problem
            prefix = "" if message.startswith(f"{src_name} and {dst_name}") else f"{where}: "
            raise self.err(prefix + message, dst_pos if at == "dst" else op.pos)
        if op.layers is not None:
            if not depth:
                raise self.err(f"a layer list picks layers for depth growth; {op.name} does not change depth", op.layers_pos)
            if any(a.key == "select" or (a.key is None and isinstance(a.value, Name) and a.value.value in ("stack", "interleave")) for a in op.args):
                raise self.err("give either select= or a layer list, not both", op.layers_pos)
            args.pop("select", None)
            args["layers"] = self.layer_list(op, src, dst)
            if info.ramp_steps is not None:  # msg masks the later copies: the originals come first, in order
                for items, have in zip(args["layers"], src.stacks):
                    firsts = [x for i, x in enumerate(items) if x not in items[:i]]
                    if firsts != list(range(have)):
                        raise self.err(f"{op.name} keeps the trained layers and masks the copies: the first occurrences "
                                       f"in the layer list must be 0..{have - 1} in order, got {firsts}", op.layers_pos)
        return args

    def layer_list(self, op: OpRef, src: ModelSpec, dst: ModelSpec) -> list[list[int]]:
        stacks = op.layers
        if len(stacks) == 1 and len(src.stacks) == 2:
            stacks = (stacks[0], stacks[0])  # one list for both t5 stacks
        if len(stacks) != len(src.stacks):
            raise self.err(f"{src.family} has one stack; give one layer list without '+'", op.layers_pos)
        names = ("encoder", "decoder") if len(src.stacks) == 2 else ("model",)
        out = []
        for items, have, want, name in zip(stacks, src.stacks, dst.stacks, names):
            indices: list[int] = []
            for item in items:
                for i in (item.start, item.end):
                    if i >= have:
                        raise self.err(f"layer {i} does not exist: the {name} of the source has layers 0..{have - 1}", item.pos)
                if item.repeat < 1:
                    raise self.err("a repeat count is at least x1", item.pos)
                indices.extend(item.indices())
            if len(indices) != want:
                raise self.err(f"the layer list gives the {name} {len(indices)} layers, but the target has {want}", op.layers_pos)
            out.append(indices)
        return out

    def chain(self, budget: Point, steps_per_epoch: int | None, train: TrainDecl) -> tuple[str, list]:
        chains = self.r.chains
        if len(chains) > 1:
            raise self.err(f"only one grow chain per recipe (the first is on line {chains[0].pos.line})", chains[1].pos)
        chain: Chain | None = chains[0] if chains else None
        if chain is None:
            return self._single_model(train, budget)
        if train.model is not None:
            raise self.err(
                f"the grow chain decides which models train; write `train {train.budget.text()} ...` without {train.model}",
                train.model_pos,
            )
        self.known_model(chain.first, chain.first_pos)
        stages: list = []
        text = [chain.first]
        current, current_pos = chain.first, chain.first_pos
        last_point: Point | None = None
        last_q = None  # the last point as written
        last_pos: Pos | None = None
        started = False  # has training begun (no more init- ops)
        for step in chain.steps:
            op = step.op
            args = self.check_growth(op, current, step.model, current_pos, step.model_pos)
            if op.init:
                if op.at is not None:
                    raise self.err(f"{op.written} grows the checkpoint before training; it takes no @ point", op.at.pos)
                if started:
                    raise self.err(f"init- grows a pretrained checkpoint before training, so it can only start the chain; write {op.name}@POINT here", op.pos)
                if chain.first not in self.checkpoints:
                    raise self.err(
                        f'{op.written} grows {chain.first}\'s pretrained checkpoint, but {chain.first} has none; add pretrained {chain.first} = "path/to/checkpoint"',
                        op.pos,
                    )
                stages.append(GrowStage(op=op.name, args=args, from_model=current, to_model=step.model, at=Point(value=0, unit=budget.unit), init=True))
                text.append(op.written)
            else:
                if op.at is None:
                    raise self.err(
                        f"say when {op.name} happens: {op.name}@2ep (a point of the budget, also 40% or 28000steps), "
                        f"or init-{op.name} to grow a pretrained checkpoint before training",
                        op.pos,
                    )
                at = self.point(op.at, budget, "the point")
                if at.value == 0:
                    raise self.err(f"{op.name}@0 would grow an untrained model; to grow a pretrained checkpoint write init-{op.name}", op.at.pos)
                if last_point is not None and compare_points(at, last_point, steps_per_epoch) in (-1, 0):
                    # the user's own units; a % written against another unit also as what it comes to
                    now, before = op.at.text(), last_q.text()
                    if op.at.unit != last_q.unit:
                        now += f" (= {at.text()})" if op.at.unit == "%" else ""
                        before += f" (= {last_point.text()})" if last_q.unit == "%" else ""
                    raise self.err(
                        f"points must increase along the chain: {now} is not after {before} (line {last_pos.line}, column {last_pos.column})",
                        op.at.pos,
                    )
                cmp = compare_points(at, budget, steps_per_epoch)
                if cmp in (0, 1):
                    raise self.err(
                        f"{op.at.text()} is {'at the end' if cmp == 0 else 'past the end'} of the {budget.text()} budget, so {step.model} would never train",
                        op.at.pos,
                    )
                stages.append(self._train_stage(current, last_point, at, started, budget))
                stages.append(GrowStage(op=op.name, args=args, from_model=current, to_model=step.model, at=at))
                text.append(f"{op.written}@{op.at.text()}")
                last_point, last_pos, last_q = at, op.at.pos, op.at
                started = True
            text.append(step.model)
            current, current_pos = step.model, step.model_pos
        stages.append(self._train_stage(current, last_point, None, started or bool(stages), budget))
        self._check_unused_checkpoints(chain.first)
        self._check_fits(chain, stages, budget, steps_per_epoch)
        self._check_ramps(chain, stages, budget, steps_per_epoch)
        return " ".join(text), stages

    def _check_fits(self, chain: Chain, stages: list, budget: Point, steps_per_epoch: int | None) -> None:
        """An op that fits on the run's batches at the growth (ligo(steps=N)) takes its N steps from
        the stage that follows: N must leave that stage at least one step of its own."""
        grows = [s for s in stages if isinstance(s, GrowStage)]
        taken: dict[int, int] = {}  # index of a train stage -> fit steps already taken from it
        for op_step, stage in zip(chain.steps, grows):
            key = catalog.FITTED_OPS.get(stage.op)
            if key is None:
                continue
            i = stages.index(stage)
            t = next(j for j in range(i + 1, len(stages)) if isinstance(stages[j], TrainStage))
            train = stages[t]
            taken[t] = taken.get(t, 0) + stage.args[key]  # consecutive init- fits add up
            start, end = train.start.steps(steps_per_epoch), (train.end or budget).steps(steps_per_epoch)
            if start is None or end is None:
                continue  # epochs without steps_per_epoch: the run checks it
            n = stage.args[key]
            if taken[t] >= end - start:
                pos = next((a.pos for a in op_step.op.args if a.key == key), op_step.op.pos)
                before = f" after {taken[t] - n} fit steps before it" if taken[t] > n else ""
                raise self.err(f"{stage.op}({key}={n}) fits for {n} steps taken from {train.model}'s stage, "
                               f"which has {end - start:g}{before}; use fewer steps or grow earlier", pos)

    def _check_ramps(self, chain: Chain, stages: list, budget: Point, steps_per_epoch: int | None) -> None:
        """An op with a ramp (msg) must end it inside the stage that follows it, and an init- msg
        must be the last init- op (its masks ramp while that stage trains). Where epochs cannot be
        counted in steps yet, `surgery run` checks the same once the data says."""
        ops = [step.op for step in chain.steps]
        grows = [s for s in stages if isinstance(s, GrowStage)]
        for op, g in zip(ops, grows):
            info = catalog.OPS.get(g.op)
            if info is None or info.ramp_steps is None:
                continue
            after = stages[next(i for i, s in enumerate(stages) if s is g) + 1]
            if isinstance(after, GrowStage):
                raise self.err(f"init-{g.op} ramps its masks while the next stage trains, so it must be the last "
                               f"init- op (here {after.op} follows)", op.pos)
            src, dst = self.models[g.from_model], self.models[g.to_model]
            need = info.ramp_steps(g.args, not same_width(src, dst), src.stacks != dst.stacks)
            start = after.start.steps(steps_per_epoch)
            end = (after.end or budget).steps(steps_per_epoch)
            if start is not None and end is not None and need > end - start:
                raise self.err(f"{g.op}: its masks ramp over {need} steps, but {after.model} trains only "
                               f"{int(end - start)} steps before {'the next growth' if after.end else 'the end'}; "
                               f"shorten ramp= (or grow earlier)", op.pos)

    def _train_stage(self, model: str, start: Point | None, end: Point | None, after_growth: bool, budget: Point) -> TrainStage:
        init_from = None if after_growth else self.checkpoints.get(model)
        return TrainStage(model=model, start=start or Point(value=0, unit=budget.unit), end=end, init_from=init_from)

    def _single_model(self, train: TrainDecl, budget: Point) -> tuple[str, list]:
        if train.model is not None:
            self.known_model(train.model, train.model_pos)
            model = train.model
        elif len(self.models) == 1:
            model = next(iter(self.models))
        elif not self.models:
            raise self.err("the recipe declares no model; add one, e.g. model B = t5(layers=6+6, d_model=512, heads=8, d_ff=1024)", train.pos)
        else:
            raise self.err(
                f"which model trains? write `train {next(iter(self.models))} {train.budget.text()} ...` or a grow chain (grow {' ... '.join(self.models)})",
                train.pos,
            )
        self._check_unused_checkpoints(model)
        return model, [self._train_stage(model, None, None, False, budget)]

    def _check_unused_checkpoints(self, first: str) -> None:
        for name, pos in self.checkpoint_pos.items():
            if name != first:
                raise self.err(f"only the model training starts from can have a pretrained checkpoint, and that is {first}, not {name}", pos)


    def _check_objective_with_chain(self, stages: list, settings: TrainSettings) -> None:
        obj = settings.objective
        key = "span(sbo=true)" if obj.name == "span" and obj.params.get("sbo") else obj.name
        why = catalog.OBJECTIVES_WITHOUT_GROWTH.get(key)
        for g in stages:
            if why and isinstance(g, GrowStage) and g.op in catalog.FITTED_OPS:
                raise self.err(f"objective {key} with {g.op} is not supported: {g.op} fits its operator through the "
                               f"model's forward call, and {why} read the model's weights besides it", self.objective_pos)
        grows = [s for s in stages if isinstance(s, GrowStage) and not s.init]
        for g in grows if why else ():
            a, b = self.models[g.from_model], self.models[g.to_model]
            where = f"objective {key} with growth mid-run ({g.op}@{g.at.text()})"
            if key == "sop" or g.op in catalog.COMPRESS_OPS:
                raise self.err(f"{where} is not supported yet: {why} would have to follow the model into "
                               "its new class; grow first (init- ops) or train one model", self.objective_pos)
            for dim in ("d_model", "max_positions"):
                if getattr(a, dim) != getattr(b, dim):
                    raise self.err(f"{where} is not supported yet: {why} is sized by {dim} "
                                   f"({getattr(a, dim)} -> {getattr(b, dim)}) and would have to grow with the model; "
                                   "grow the depth mid-run (d), or the width before training (init- ops)", self.objective_pos)
        if settings.parallel == "fsdp":
            self._check_sharded(stages, key, settings.freeze is not None)
        for s in stages:
            if isinstance(s, TrainStage):
                fam = self.models[s.model].family
                info = catalog.OBJECTIVES[obj.name]
                if fam not in info.families:
                    raise self.err(f"objective {obj.name} is for {', '.join(info.families)} models, but {s.model} is {fam}", self.objective_pos)

    def _check_sharded(self, stages: list, objective: str, freeze: bool) -> None:
        problem = sharded_problem(stages, objective, freeze)
        if problem is not None:
            raise self.err(problem, getattr(self, "parallel_pos", None))


def objective_key(objective) -> str:
    return "span(sbo=true)" if objective.name == "span" and objective.params.get("sbo") else objective.name


def sharded_problem(stages: list, objective: str, freeze: bool = False) -> str | None:
    """Why parallel=fsdp cannot run this chain and objective, or None. It shards the model's own
    tensors and grows them tensor by tensor (surgery/train/sharding.py)."""
    for s in stages:
        if isinstance(s, GrowStage) and s.op in catalog.COMPRESS_OPS:
            what = ("distillation keeps a teacher model beside the student" if s.op == "distil" else
                    f"{s.op} works on the whole model in memory, with no per-tensor path")
            return f"parallel=fsdp does not support the {s.op} op ({what}); use parallel=ddp"
        info = catalog.OPS.get(s.op) if isinstance(s, GrowStage) else None
        if info is not None and (s.op in catalog.FITTED_OPS or info.ramp_steps is not None):
            what = ("fits its operator on the whole model's forward" if s.op in catalog.FITTED_OPS
                    else "hooks its masks on whole modules")
            return f"parallel=fsdp does not support the {s.op} op yet ({what}; not built for shards); use parallel=ddp"
    if freeze:
        return "parallel=fsdp does not support freeze= yet (its masks address whole parameters); use parallel=ddp"
    why = catalog.OBJECTIVES_WITH_AUX.get(objective)
    if why is not None:
        return (f"parallel=fsdp does not support objective {objective}: {why} trains beside the model, reading "
                "its embeddings, and is not sharded; use parallel=ddp")
    return None
