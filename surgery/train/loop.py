"""The staged pretraining loop: train a segment, grow weights and optimizer state, go on.

Runs on one CPU, one GPU, or several processes (torchrun / accelerate launch: DDP through
Accelerate; bf16 where the device has it). Every process builds the same global batch and takes
its rows of it, so what a step sees does not depend on the process count; every process grows its
model alike at the same step and wraps it again; only the first one writes files and prints.
Everything that decides a step's outcome (batch, masks, LR, dropout RNG) is restored from a
checkpoint, so a resumed run ends with the weights an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from rich.markup import escape
from safetensors import SafetensorError

from surgery.checkpoints import carry_files, has_tokenizer
from surgery.errors import SurgeryError
from surgery.families.build import with_pretraining_head
from surgery.train import checkpoint as ckpt
from surgery.train import masks, sharding
from surgery.train.console import RunConsole, fmt_loss
from surgery.train.corpus import load_documents, resolve_corpus
from surgery.train.data import (
    BatchOrder,
    step_rng,
    to_blocks,
    to_doc_blocks,
    tokenize_documents,
    validation_batches,
)
from surgery.train.objectives import make_objective
from surgery.train.schedule import LrCurve, RunSettings, Segment, growth_seed
from surgery.train.tokenizer import get_tokenizer


def tracker(name: str, out: Path) -> str:
    """The Accelerate tracker for report_to=NAME, set to write inside the run folder and offline
    (W&B offline mode, MLflow file store) unless the environment already says otherwise."""

    from accelerate.utils import (
        is_mlflow_available,
        is_tensorboard_available,
        is_wandb_available,
    )

    available = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available, "mlflow": is_mlflow_available}
    if name not in available:
        raise SurgeryError(f"report_to must be one of none, {', '.join(available)}; got {name!r}")
    if not available[name]():
        raise SurgeryError(f"report_to={name} needs the {name} package: pip install {name}")
    if name == "wandb":
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_DIR", str((out / "logs").resolve()))
    if name == "mlflow":
        os.environ.setdefault("MLFLOW_TRACKING_URI", (out / "logs" / "mlruns").resolve().as_uri())
    return name


class MetricsLog:
    """metrics.jsonl: one JSON object a line; truncated to the checkpoint's length on resume."""

    def __init__(self, path: Path, keep_lines: int | None, write: bool = True):
        self.path = path
        lines = path.read_text().splitlines() if path.exists() else []
        lines = lines[:keep_lines] if keep_lines is not None else []
        if write:
            path.write_text("".join(l + "\n" for l in lines))
        self.count = len(lines)
        self.rows = [json.loads(l) for l in lines]

    def write(self, row: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self.count += 1
        self.rows.append(row)


def make_optimizer(model, s: RunSettings, aux=None):
    decay, no_decay = [], []
    named = list(model.named_parameters()) + (list(aux.named_parameters()) if aux is not None else [])
    for name, p in named:
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=s.lr, betas=tuple(s.betas), eps=s.eps)


class Trainer:
    def __init__(self, segments: list[Segment], settings: RunSettings, out_dir: Path, *,
                 run_name: str, plan_json: dict | None = None, resume: bool = False, quiet: bool = False,
                 corpus_base: Path | None = None, stop_after_step: int | None = None, report_to: str | None = None,
                 console: RunConsole | None = None):
        from accelerate import Accelerator
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        self.segments, self.s, self.out = segments, settings, Path(out_dir)
        self.run_name, self.plan_json, self.resume, self.quiet = run_name, plan_json, resume, quiet
        self.corpus_base = corpus_base
        self.stop_after_step = stop_after_step  # tests: stop as if killed, without the kill
        cuda = torch.cuda.is_available()
        precision = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}.get(settings.precision)
        if precision is None:  # auto: bf16 where the device has it
            precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
        if precision != "no" and not cuda:
            raise SurgeryError(f"precision={settings.precision} needs a GPU; use precision=auto or fp32 on CPU")
        self.report_to = report_to or settings.report_to
        log_with = None
        if self.report_to not in (None, "none"):
            log_with = tracker(self.report_to, self.out)
        self.acc = Accelerator(mixed_precision=precision, cpu=not cuda, log_with=log_with,
                               project_dir=self.out / "logs" if log_with else None)
        self.n, self.rank = self.acc.num_processes, self.acc.process_index
        if settings.batch_size < self.n:
            raise SurgeryError(f"batch_size={settings.batch_size} is smaller than the {self.n} processes: "
                               f"every process needs at least one row of each batch")
        # parallel=fsdp under several processes: parameters and AdamW state sharded (sharding.py)
        self.sharded = settings.parallel == "fsdp" and self.n > 1
        self.saved_state: dict | None = None  # the state the latest checkpoint holds (all ranks agree)
        self.ui = console or RunConsole(quiet=quiet)
        self.val_losses: list[float] = []  # every validation so far, to say what a growth changed
        self.stage_rows: list[tuple] = []  # the final summary table
        self.pending_grow = (None, None)
        self.ligo_at = None  # (segment index, TrainState) while a segment is entered: where a ligo fit counts
        self.trackers = False
        self.msg = None  # MSG masks while they ramp (surgery.train.masks)
        self.family = segments[0].spec.family
        self.vocab = segments[0].spec.vocab

    # -- data ---------------------------------------------------------------------------------
    def prepare_data(self, progress=None):
        s = self.s
        corpus = resolve_corpus(s.corpus, self.corpus_base)
        val_seed = s.seed if s.val_seed is None else s.val_seed
        train_docs, valid_docs = load_documents(corpus, seed=val_seed, val_fraction=s.val_fraction, max_docs=s.corpus_docs)
        self.tokenizer = self.own_tokenizer() or get_tokenizer(corpus, train_docs, self.family, self.vocab)
        if len(self.tokenizer) > self.vocab:
            raise SurgeryError(f"tokenizer has {len(self.tokenizer)} tokens, more than the model's vocab={self.vocab}")
        try:
            self.objective = make_objective(s.objective, s.objective_params, self.tokenizer, s.seq_len, seed=s.seed)
        except (TypeError, ValueError) as err:
            raise SurgeryError(f"objective {s.objective}: {err}") from None
        key = f"{corpus.fingerprint()}:{self.tokenizer.name_or_path}"
        train = tokenize_documents(train_docs, self.tokenizer, key + ":train", progress=progress)
        valid = tokenize_documents(valid_docs, self.tokenizer, key + ":valid", progress=progress)
        if s.packing == "doc-sentences":
            sep = self.tokenizer.sep_token_id
            self.train_blocks = to_doc_blocks(train, self.objective.raw_len, sep, self.tokenizer.pad_token_id)
            self.valid_blocks = to_doc_blocks(valid, self.objective.raw_len, sep, self.tokenizer.pad_token_id)
        else:
            self.train_blocks = to_blocks(train, self.objective.raw_len)
            self.valid_blocks = to_blocks(valid, self.objective.raw_len)
        if len(self.train_blocks) == 0 or len(self.valid_blocks) == 0:
            raise SurgeryError(f"corpus {corpus.name!r} is too small for seq_len={s.seq_len}")
        self.order = BatchOrder(len(self.train_blocks), s.batch_size, s.grad_accum, s.seed)
        self.val = validation_batches(self.valid_blocks, self.objective, s.batch_size, val_seed, s.val_batches)
        self.tokens_per_step = s.batch_size * s.grad_accum * self.objective.raw_len

    def own_tokenizer(self):
        """The tokenizer the weights were trained with, when they come from somewhere: the run's
        own (saved at its start; --resume reads it back), else the pretrained checkpoint's. Only a
        run that starts from scratch trains a tokenizer (surgery.train.tokenizer)."""
        from transformers import AutoTokenizer

        saved = self.out / "tokenizer"
        if self.resume and (saved / "tokenizer_config.json").exists():
            return AutoTokenizer.from_pretrained(saved)
        source = self.segments[0].init_from
        if source is not None and has_tokenizer(Path(source)):
            tok = AutoTokenizer.from_pretrained(source)
            self.ui.line(f"tokenizer: the checkpoint's own ({type(tok).__name__}, {len(tok)} tokens) from {source}")
            return tok
        return None

    def keep_tokenizer(self) -> None:
        """The run folder holds the tokenizer its weights pair with, so --resume never pairs them
        with another (a cleared cache, another machine)."""
        if self.main and not self.resume:
            self.tokenizer.save_pretrained(self.out / "tokenizer")

    # -- model --------------------------------------------------------------------------------
    def first_model(self, seg: Segment):
        from surgery.families import build_model

        if seg.init_from is None:
            return self.as_objective_class(build_model(seg.spec, seed=self.s.seed))
        from surgery.io import load_checkpoint

        declared = seg.init_spec or seg.spec
        if seg.init_chain:
            declared = seg.init_chain[0][1]
        if declared.descriptor.has_view:
            source = load_checkpoint(seg.init_from)
        else:  # no neutral view (albert, mixtral, qwen2_moe): transformers reads it
            from surgery.compress import ViewlessCheckpoint

            source = ViewlessCheckpoint(seg.init_from)
        if source.spec.model_copy(update={"head": declared.head}) != declared:
            raise SurgeryError(f"pretrained checkpoint {seg.init_from} is {source.spec.describe()}, "
                               f"but the recipe declares {declared.describe()}")
        model, note = with_pretraining_head(source.model())
        if note:
            self.ui.line(f"pretrained {seg.init_from}: {note}")
        chain = seg.init_chain or (((seg.grow, seg.init_spec, seg.spec),) if seg.grow is not None else ())
        for growth, src_spec, dst_spec in chain:
            model = self.grow(model, src_spec, dst_spec, growth, growth_seed(growth, self.s.seed))[0]
        return self.as_objective_class(model)

    def transform(self, model, src_spec, dst_spec, growth, seed):
        """One op of the chain in memory: a growth (surgery.ops) or a compression (surgery.compress).
        A distil op keeps the model it starts from as the teacher of the stage that follows."""
        from surgery.catalog import COMPRESS_OPS
        from surgery.compress import compress_model
        from surgery.ops import grow_model

        if growth.op not in COMPRESS_OPS:
            return grow_model(model, src_spec, dst_spec, growth.op, seed=seed, options=growth.options).model
        new = compress_model(model.cpu(), src_spec, dst_spec, growth.op, growth.options, seed=seed)
        if growth.op == "distil":
            self.distil = self._distil_loss(model, new, growth.options)
        return new

    def restore_teacher(self, index: int, student) -> None:
        """On resume inside a distillation stage: the teacher again (the previous stage's saved
        model, or the pretrained checkpoint put through the init- ops before distil)."""
        from surgery.compress import load_model

        seg = self.segments[index]
        if seg.grow is None or seg.grow.op != "distil":
            return
        if index > 0:
            prev = self.segments[index - 1]
            teacher = load_model(self.stage_dir(prev, index - 1))
        else:
            from surgery.io import load_checkpoint

            teacher = load_checkpoint(seg.init_from).model()
            for growth, src_spec, dst_spec in seg.init_chain[:-1]:
                teacher = self.grow(teacher, src_spec, dst_spec, growth, growth_seed(growth, self.s.seed))[0]
        self.distil = self._distil_loss(teacher, student, seg.grow.options)

    def _distil_loss(self, teacher, student, options: dict):
        from surgery.distillation import build

        return build(options.get("style", "distilbert"), teacher, student, options,
                     self.objective.mask_id).to(self.acc.device)

    def stage_aux(self, model, aux_weights):
        """The modules trained beside the model in this stage: a distillation's (projections, tutor)
        while one runs, else the objective's heads (built once, kept across growth)."""
        if self.distil is not None:
            self.aux = self.distil.trainable
        elif self.aux is None or self.aux_is_distil:
            self.aux = self.objective.build_aux(model)
        self.aux_is_distil = self.distil is not None
        if self.aux is not None and aux_weights is not None:
            self.aux.load_state_dict(aux_weights)
        if self.aux is not None and self.sharded:
            raise SurgeryError("parallel=fsdp shards the model only: objectives with modules beside it "
                               "(span(sbo=true), electra) and distillation need parallel=ddp")
        if self.aux is not None:
            self.aux.to(self.acc.device).train()

    def as_objective_class(self, model):
        """The model as the class its objective trains (sop: *ForPreTraining, with its head)."""
        from surgery.train.bert_objectives import as_model_kind

        return as_model_kind(model, self.objective.model_kind)

    def loss(self, model, batch, train: bool = True):
        if model is not self.acc.unwrap_model(model):
            model = _Wrapped(model, self.acc.unwrap_model(model))
        if self.distil is not None:
            return self.distil(model, batch, train=train)
        return self.objective.loss(model, self.aux, batch)

    @torch.no_grad()
    def validate(self, model) -> float:
        # Every rank validates the whole fixed set on its own copy (no collectives: the ranks
        # hold the same weights, so they get the same number).
        model = self.acc.unwrap_model(model)
        model.eval()
        if self.aux is not None:
            self.aux.eval()
        total, n = 0.0, 0
        for batch in self.val:
            batch = {k: v.to(self.acc.device) for k, v in batch.items()}
            with self.acc.autocast():
                loss, count = self.loss(model, batch, train=False)
            count = int(count)
            total += float(loss) * count
            n += count
        model.train()
        if self.aux is not None:
            self.aux.train()
        return total / max(1, n)

    def stage_dir(self, seg: Segment, index: int) -> Path:
        return self.out / "stages" / f"{index}-{seg.name}"

    def save_stage(self, model, seg: Segment, index: int) -> Path:
        self.msg = masks.before_save(self.msg, self.ui)  # a run stopped inside an msg ramp (until)
        folder = self.stage_dir(seg, index)
        tmp = folder.with_name(folder.name + ".tmp")
        sharded = self.sharded and sharding.is_sharded(model)
        if sharded:  # every rank gathers, the first writes; all go on once the folder is there
            if self.main:
                shutil.rmtree(tmp, ignore_errors=True)
            sharding.save_pretrained(model, tmp, self.main)
            if not self.main:
                self.acc.wait_for_everyone()
        if not self.acc.is_main_process:
            return folder
        if not sharded:
            shutil.rmtree(tmp, ignore_errors=True)
            self.acc.unwrap_model(model).save_pretrained(tmp, safe_serialization=True)
        self.tokenizer.save_pretrained(tmp)
        source = self.segments[0].init_from
        if source is not None:  # files of the pretrained folder surgery does not write (sentence-transformers')
            carry_files(Path(source), tmp, seg.spec.d_model)
        if self.aux is not None:  # modules trained beside the model (not part of it)
            from safetensors.torch import save_file

            name = f"distil-{seg.grow.options.get('style', 'distilbert')}" if self.aux_is_distil else self.s.objective
            (tmp / "objective").mkdir()
            save_file(ckpt.module_tensors(self.aux), tmp / "objective" / f"{name}_heads.safetensors")
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
        if sharded:
            self.acc.wait_for_everyone()
        return folder

    # -- the run ------------------------------------------------------------------------------
    # run() reads top to bottom as: data, resume (or a fresh start), then per segment: enter it
    # (first model, growth, or the resumed model), its steps, its stage folder; then the summary.
    # Everything a checkpoint must carry besides tensors is the TrainState.

    def run(self) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        if self.plan_json is not None and self.acc.is_main_process:
            (self.out / "plan.json").write_text(json.dumps(self.plan_json, indent=1))
        self.main = self.acc.is_main_process
        with self.ui, _Signals() as self.signals:
            # The first process trains the tokenizer and tokenizes into the cache; the others
            # then read the cache instead of doing the same work beside it.
            with self.acc.main_process_first():
                self.prepare_data(self.ui.progress)
            self.keep_tokenizer()
            spe = self.order.steps_per_epoch
            self.bounds = [seg.steps(spe) for seg in self.segments]
            if any(end <= start for start, end in self.bounds):
                raise SurgeryError(f"with {spe} steps per epoch a stage would train for no steps: {self.bounds}")
            masks.check_ramps(self.segments, self.bounds)
            self.total = self.bounds[-1][1]
            self.curve = LrCurve.of(self.s, self.total, spe)
            self.aux, self.distil, self.aux_is_distil = None, None, False
            st, model, at = self.start_or_resume()
            keep = st.metrics_lines if model is not None else None
            # The first process truncates metrics.jsonl to the checkpoint's lines; the others
            # read it only after that (a half-written file would not parse).
            if self.main:
                self.metrics = MetricsLog(self.out / "metrics.jsonl", keep, write=True)
            self.acc.wait_for_everyone()
            if not self.main:
                self.metrics = MetricsLog(self.out / "metrics.jsonl", keep, write=False)
            self.t0 = time.perf_counter() - st.wall_s
            self.start_trackers(resumed=model is not None)
            self.ui.bar("train", self.total, st.step)
            self.signals.armed = True
            last_stage = self.stage_dir(self.segments[st.segment], st.segment)
            for index in range(st.segment, len(self.segments)):
                if st.stopped:
                    break
                model, at, optimizer = self.enter_segment(index, model, at, st)
                if optimizer is None:  # resumed from this segment's last checkpoint: nothing to train
                    last_stage = self.stage_dir(self.segments[index], index)
                    if not last_stage.exists():
                        self.save_stage(model, self.segments[index], index)
                    continue
                if not self.train_steps(index, model, optimizer, st):
                    return {"stopped_early": True, "step": st.step}
                self.opt_state = ckpt.optimizer_state_by_name(optimizer, self.acc.unwrap_model(model))
                last_stage = self.save_stage(model, self.segments[index], index)
                self.event_stage_end(index, st)
            self.signals.armed = False
            if not last_stage.exists():  # resumed from the last checkpoint, before its stage was saved
                last_stage = self.save_stage(model, self.segments[st.segment], st.segment)
            if self.main:
                final = self.out / "final"
                shutil.rmtree(final, ignore_errors=True)
                shutil.copytree(last_stage, final)
        return self.finish(st)

    def start_or_resume(self) -> tuple["TrainState", object, int]:
        """(state, model or None, index of the segment the model belongs to). A fresh start seeds
        every global RNG from the recipe's seed, whatever the first model is (built, or loaded
        from a checkpoint and grown): dropout draws are then the same in every run."""
        import transformers

        root = self.out / "checkpoints"
        self.opt_state, self.aux_weights, self.aux_opt, self.rng = None, None, {}, None
        if not self.resume:
            if root.exists() and self.acc.is_main_process:
                shutil.rmtree(root)
            transformers.set_seed(self.s.seed)
            return TrainState(), None, -1
        latest = ckpt.latest_checkpoint(root)
        if latest is None:
            raise SurgeryError(f"--resume: no complete checkpoint in {root}; run without --resume to start afresh")
        from surgery.compress import load_model

        rows = self.sharded and sharding.can_load(latest / "model")  # each rank reads its rows only
        raw, self.opt_state, self.rng = ckpt.read_checkpoint(latest, optimizer=not rows)
        st = TrainState.of(raw)
        self.saved_state = {**asdict(st), "wall_s": None}
        if rows:
            model = sharding.load_model(latest / "model", self.acc.device)
            self.opt_state = sharding.read_optimizer_rows(latest / "optimizer.safetensors", model)
        else:
            model = load_model(latest / "model")
        self.aux_weights, self.aux_opt = ckpt.read_aux(latest)
        self.restore_teacher(st.segment, model)
        self.ui.line(f"resuming {escape(str(self.out))} at step {st.step} of {self.total} "
                     f"({self.segments[st.segment].name})")
        return st, model, st.segment

    def enter_segment(self, index: int, model, at: int, st: "TrainState"):
        """The model this segment trains and its optimizer; optimizer None when a resumed run's
        checkpoint is this segment's end (the model then grows on entering the next one)."""
        seg = self.segments[index]
        seg_start, seg_end = self.bounds[index]
        grown = False
        self.ligo_at = (index, st)
        if model is None:
            model = self.first_model(seg)
            grown = seg.grow is not None
            self.opt_state = None
        elif at == index - 1:
            prev = self.segments[index - 1]
            seed = growth_seed(seg.grow, self.s.seed, index)
            before = self.val_losses[-1] if self.val_losses else None
            self.distil = None  # a distillation ends with its stage
            keep = self.s.optimizer_on_grow == "grow"
            model, self.opt_state = self.grow(self.acc.unwrap_model(model), prev.spec, seg.spec, seg.grow, seed,
                                              self.opt_state if keep else None)
            grown = True
            self.log({"event": "grow", "stage": index, "model": seg.name, "op": seg.grow.op, "step": st.step,
                      "tokens": st.tokens, "from": prev.name})
            self.pending_grow = (prev, before)
        elif st.step >= seg_end:
            self.aux_opt = {}
            return model, index, None
        model = model.to(self.acc.device)
        if self.sharded:
            model = sharding.shard(model, self.acc.device)
        model.train()
        self.msg = masks.attach(self, index, model, st.step)  # msg growth: masks until the ramp ends
        self.stage_aux(model, self.aux_weights)
        self.aux_weights = None
        optimizer = make_optimizer(model, self.s, self.aux)
        if self.opt_state:
            (sharding if self.sharded else ckpt).load_optimizer_state(optimizer, model, self.opt_state)
        if self.aux is not None and self.aux_opt:
            ckpt.load_optimizer_state(optimizer, self.aux, self.aux_opt)
        self.aux_opt = {}  # only the resumed stage continues from the checkpoint
        if self.rng is not None:  # the dropout RNG where the checkpoint left it
            ckpt.restore_rng(self.rng)
            self.rng = None
        # Accelerate keeps every prepared model and optimizer; the small model of the previous
        # stage (and its DDP buckets) would stay alive beside the grown one.
        self.acc.free_memory()
        if not self.sharded:  # sharded: FSDP2 is the wrapper (Accelerate would add DDP)
            model, optimizer = self.acc.prepare(model, optimizer)
        from surgery.train.freeze import (
            freezer_for,  # freeze=old(N steps): only new parameters train
        )

        self.freezer = freezer_for(self, index, model, st.step)
        if grown or (st.step == seg_start and index == 0 and not self.metrics.rows):
            vl = self.validate(model)
            self.log({"stage": index, "model": seg.name, "step": st.step, "tokens": st.tokens,
                      "train_loss": None, "val_loss": vl})
            self.event_entered(index, st, vl, grown)
        self.ui.bar(f"{index}:{seg.name}", self.total, st.step)
        return model, index, optimizer

    def grow(self, model, src_spec, dst_spec, growth, seed, opt_state=None):
        """The one growth path, before training (init-) and mid-run: (new model, its AdamW state
        or None). Compression ops make new parameters, so their optimizer starts fresh."""
        from surgery.catalog import COMPRESS_OPS, OPS, resolve
        from surgery.ops import grow_model

        info = OPS.get(growth.op) or COMPRESS_OPS.get(growth.op)
        if info is not None and info.in_run:  # the op needs the run (ligo's batches, moe's optimizer state)
            return resolve(info.in_run)(self, model, src_spec, dst_spec, growth, seed, opt_state)
        if growth.op in COMPRESS_OPS:
            return self.transform(model, src_spec, dst_spec, growth, seed), None
        if self.sharded and sharding.is_sharded(model):  # tensor by tensor, never the whole model
            return sharding.grow(model, src_spec, dst_spec, growth.op, seed, growth.options, opt_state, self.acc.device)
        result = grow_model(model.cpu(), src_spec, dst_spec, growth.op, seed=seed, options=growth.options)
        return result.model, (result.grow_optimizer_state(opt_state) if opt_state else None)

    def train_steps(self, index: int, model, optimizer, st: "TrainState") -> bool:
        """The segment's optimizer steps from st.step. False: stopped early (stop_after_step).

        The host reads device values only at read points (a log line, a validation, a checkpoint,
        a stop), never per micro-step: losses are summed on the device, a non-finite loss or
        gradient norm is recorded on the device with its step, and at the next read point the run
        stops naming that step, before any checkpoint holds its state."""
        seg = self.segments[index]
        seg_start, seg_end = self.bounds[index]
        spe = self.order.steps_per_epoch
        tick, steps_done, shown = time.perf_counter(), 0, None
        every = self.s.ckpt_every or self.s.val_every
        n, rank, dev = self.n, self.rank, self.acc.device
        self.bad = torch.full((3,), -1.0, device=dev)  # first non-finite: step, value, 0 loss / 1 grad norm
        since = torch.zeros((), device=dev)  # train loss summed since the last read point
        since_n = 0
        while st.step < seg_end and not st.stopped:
            if n == 1 and self.signals.received:  # one process: stop at once, nobody to agree with
                self.read(index, st, None, since, since_n, stop=True)
                self.interrupted(index, model, optimizer, st)
            lr = self.curve(st.step, grown_at=seg_start if index > 0 else None)
            for g in optimizer.param_groups:
                g["lr"] = lr
            if n > 1:
                # Dropout per rank and per step, a function of (seed, step, rank): ranks draw
                # different masks, and a resumed run (with any process count) draws the same.
                torch.manual_seed(int(np.random.default_rng([self.s.seed, 15485863, st.step, rank]).integers(2**62)))
            if self.msg is not None:
                self.msg.set_step(st.step + 1)
            step_loss = torch.zeros((), device=dev)
            for micro in range(self.s.grad_accum):
                idx = self.order.indices(st.step, micro)
                batch = self.objective(self.train_blocks[idx], step_rng(self.s.seed, st.step, micro),
                                       block_ids=idx, epoch=st.step // spe)
                weight = 1.0
                if n > 1:
                    # Every process builds the one global batch and takes its rows, so the data of
                    # a step does not depend on the count. DDP averages the ranks' gradients; each
                    # rank's mean loss is weighted by its share of the loss tokens (rows when there
                    # are no labels) so the step's gradient is the global batch's mean, even when
                    # the rows or the masked tokens do not split evenly.
                    labels = batch.get("labels")
                    if labels is not None and labels.dim() == 2:
                        total, mine = int((labels != -100).sum()), int((labels[rank::n] != -100).sum())
                    else:
                        total, mine = len(idx), len(range(rank, len(idx), n))
                    weight = n * mine / max(1, total)
                    batch = {k: (v[rank::n] if v.dim() else v) for k, v in batch.items()}
                batch = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
                # Gradients are exchanged once per optimizer step, on its last micro-batch.
                sync = nullcontext() if n == 1 or micro == self.s.grad_accum - 1 else self.acc.no_sync(model)
                with sync:
                    with self.acc.autocast():
                        loss = self.loss(model, batch)[0]
                        loss = (loss * weight if weight != 1.0 else loss) / self.s.grad_accum
                    self.acc.backward(loss)
                step_loss += loss.detach().float()
            if n > 1 and self.aux is not None:  # modules beside the model are not DDP-wrapped
                for p in self.aux.parameters():
                    if p.grad is not None:
                        torch.distributed.all_reduce(p.grad)
                        p.grad /= n
            if self.freezer is not None:
                self.freezer.before_step(st.step)
            norm = None
            if self.s.max_grad_norm:
                params = list(model.parameters()) + (list(self.aux.parameters()) if self.aux is not None else [])
                clip = sharding.clip_grad_norm_ if self.sharded else self.acc.clip_grad_norm_
                norm = clip(params, self.s.max_grad_norm)
            self.watch(st.step + 1, step_loss, norm)
            optimizer.step()
            if self.freezer is not None:
                self.freezer.after_step(st.step)
            optimizer.zero_grad(set_to_none=True)
            st.step += 1
            if self.msg is not None and self.msg.done(st.step):  # masks at 1: the plain model
                self.msg = self.msg.fold()
            st.tokens += self.tokens_per_step
            steps_done += 1
            since += step_loss
            since_n += 1
            validate_now = st.step % self.s.val_every == 0 or st.step == seg_end
            ckpt_now = st.step % every == 0 or st.step == seg_end
            stop_after = self.stop_after_step is not None and st.step >= self.stop_after_step
            if validate_now or ckpt_now or stop_after or st.step % self.s.log_every == 0 or (
                    n == 1 and self.signals.received):
                train_loss, shown, stop = self.read(index, st, step_loss, since, since_n)
                since, since_n = torch.zeros((), device=dev), 0
                row = {"stage": index, "model": seg.name, "step": st.step, "tokens": st.tokens,
                       "train_loss": train_loss, "lr": lr}
                if validate_now:
                    row["val_loss"] = self.validate(model)
                    if not math.isfinite(row["val_loss"]):
                        self.diverged(index, st, row["val_loss"], "validation loss")
                    target = self.s.until_val_loss
                    if target is not None and (row["val_loss"] < target if self.s.until_strict else row["val_loss"] <= target):
                        st.stopped = True
                        row["event"] = "until"
                if validate_now or st.step % self.s.log_every == 0:
                    self.log({**row, **getattr(self.distil, "last", {})})
                if validate_now:
                    self.event_validation(index, st, row)
                if ckpt_now or st.stopped:
                    self.checkpoint(index, model, optimizer, st)
                if stop:
                    self.interrupted(index, model, optimizer, st)
            rate = self.tokens_per_step * steps_done / max(1e-9, time.perf_counter() - tick)
            self.ui.advance(st.step, (f"loss {shown:.3f}  " if shown is not None else "") + f"{rate:,.0f} tok/s")
            if stop_after:
                return False
        return True

    def watch(self, step: int, loss, norm) -> None:
        """Record on the device the first step whose loss or gradient norm is not finite (no host
        read: the check happens at the next read point)."""
        vals = torch.stack([loss.float(), (norm if norm is not None else torch.zeros((), device=loss.device)).float()])
        bad = ~torch.isfinite(vals)
        first = bad.any() & (self.bad[0] < 0)
        now = torch.stack([torch.tensor(float(step), device=loss.device), torch.where(bad[0], vals[0], vals[1]),
                           torch.where(bad[0], 0.0, 1.0).to(vals.dtype)])
        self.bad = torch.where(first, now, self.bad)

    def read(self, index: int, st: "TrainState", step_loss, since, since_n: int, stop: bool = False):
        """A read point: (this step's train loss, the mean since the last read, stop?), the losses
        averaged over the processes and the stop agreed by all (a signal any rank got), in one
        reduction; a non-finite loss or gradient norm recorded since ends the run here."""
        flag = 1.0 if (stop or self.signals.received) else 0.0
        dev = self.acc.device
        packed = torch.stack([step_loss.float() if step_loss is not None else torch.zeros((), device=dev),
                              since.float() / max(1, since_n), torch.tensor(flag, device=dev)])
        if self.n > 1:
            packed = self.acc.reduce(packed, reduction="sum")
            packed = packed / torch.tensor([self.n, self.n, 1.0], device=dev)
        loss, mean, flag = packed.tolist()
        bad_step, value, kind = self.bad.tolist()
        if bad_step >= 0:
            self.diverged(index, TrainState(step=int(bad_step) - 1), value, ("training loss", "gradient norm")[int(kind)])
        return loss, (mean if since_n else None), flag > 0

    # -- checkpoints and the ways a run stops -------------------------------------------------
    def checkpoint(self, index: int, model, optimizer, st: "TrainState") -> bool:
        """Write a checkpoint at st.step. A write that fails (disk full, no permission) leaves the
        previous checkpoint as it was; the run says why and goes on."""
        st.segment, st.wall_s, st.metrics_lines = index, time.perf_counter() - self.t0, self.metrics.count
        ok = True
        if self.saved_state == {**asdict(st), "wall_s": None}:
            return True  # a signal right after a checkpoint: it already holds this very state
        if self.main or self.sharded:
            try:
                if self.sharded:  # every rank gathers tensor by tensor, the first writes
                    sharding.save_checkpoint(self.out / "checkpoints", st.step, model, optimizer, asdict(st),
                                             self.main)
                else:
                    ckpt.save_checkpoint(self.out / "checkpoints", st.step, self.acc.unwrap_model(model), optimizer,
                                         asdict(st), aux=self.aux)
            except (OSError, SafetensorError) as err:
                ok = False
                kept = ckpt.latest_checkpoint(self.out / "checkpoints")
                where = f"the previous one ({kept.name}) is kept" if kept else "there is no earlier one"
                why = f"{err.strerror}: {err.filename}" if getattr(err, "filename", None) else (
                    getattr(err, "strerror", None) or str(err))
                self.ui.warn(f"checkpoint at step {st.step} not written ({why}); {where}")
        if self.n > 1:  # every rank learns whether the first one wrote it
            from accelerate.utils import broadcast

            ok = bool(broadcast(torch.tensor([float(ok)], device=self.acc.device), from_process=0).item())
        if ok:
            self.saved_state = {**asdict(st), "wall_s": None}
        self.acc.wait_for_everyone()
        return ok

    def interrupted(self, index: int, model, optimizer, st: "TrainState"):
        saved = self.checkpoint(index, model, optimizer, st)
        raise RunInterrupted(self.signals.received, st.step, saved)

    def diverged(self, index: int, st: "TrainState", value: float, what: str):
        kept = ckpt.latest_checkpoint(self.out / "checkpoints")
        where = f"the last good checkpoint is {kept} (step {TrainState.of(ckpt.read_state(kept)).step})" if kept \
            else "no checkpoint was written before it"
        raise SurgeryError(f"the {what} became {value} at step {st.step + 1} ({self.segments[index].name}): "
                           f"the run stopped; {where}; a lower learning rate or max_grad_norm may help")

    # -- what the run reports -----------------------------------------------------------------
    def log(self, row: dict) -> None:
        if self.main:
            self.metrics.write({"wall_s": round(time.perf_counter() - self.t0, 3), **row})
        if row.get("val_loss") is not None:
            self.val_losses.append(row["val_loss"])

    def track(self, values: dict, step: int) -> None:
        if self.trackers:
            self.acc.log(values, step=step)

    def event_entered(self, index: int, st: "TrainState", vl: float, grown: bool) -> None:
        seg = self.segments[index]
        self.track({"val_loss": vl, "stage": index}, st.step)
        if not grown:
            self.ui.line(f"step {st.step:>6}  {seg.name}  val loss {fmt_loss(vl)}  (start)")
            return
        prev, before = getattr(self, "pending_grow", (None, None))
        self.pending_grow = (None, None)
        src = prev.spec if prev is not None else (seg.init_chain[0][1] if seg.init_chain else seg.init_spec)
        frm = prev.name if prev is not None else "pretrained"
        shapes = f"{src.describe()} -> {seg.spec.describe()}" if src is not None else seg.spec.describe()
        loss = f"val loss {fmt_loss(before)} -> {fmt_loss(vl)}" if before is not None else f"val loss {fmt_loss(vl)}"
        self.ui.line(f"step {st.step:>6}  [bold]grow[/] {escape(seg.grow.op)}: {escape(frm)} -> {escape(seg.name)}  "
                     f"{escape(shapes)}  {loss}")
        self.track({"event/grow": f"{seg.grow.op}: {frm} -> {seg.name} ({shapes}); {loss}"}, st.step)

    def event_validation(self, index: int, st: "TrainState", row: dict) -> None:
        seg = self.segments[index]
        until = "  [green]target reached[/]" if row.get("event") == "until" else ""
        self.ui.line(f"step {st.step:>6}  {escape(seg.name)}  train loss {fmt_loss(row['train_loss'])}  "
                     f"val loss {fmt_loss(row['val_loss'])}  lr {row['lr']:.2e}{until}")
        self.track({"val_loss": row["val_loss"], "train_loss": row["train_loss"], "lr": row["lr"],
                    "stage": index}, st.step)

    def event_stage_end(self, index: int, st: "TrainState") -> None:
        seg = self.segments[index]
        vl = self.val_losses[-1] if self.val_losses else None
        folder = self.stage_dir(seg, index)
        self.stage_rows.append((index, seg.name, seg.spec.describe(), st.step, st.tokens, vl,
                                time.perf_counter() - self.t0))
        self.ui.line(f"step {st.step:>6}  stage {index} ({escape(seg.name)}) done: val loss {fmt_loss(vl)}, "
                     f"saved {escape(str(folder))}")
        self.track({"event/stage_end": f"stage {index} ({seg.name}) ends at step {st.step}, val loss {fmt_loss(vl)}"},
                   st.step)

    def start_trackers(self, resumed: bool) -> None:
        self.trackers = self.report_to not in (None, "none")
        if not self.trackers:
            return
        config = {k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v))
                  for k, v in asdict(self.s).items()}
        self.acc.init_trackers(self.run_name, config={k: v for k, v in config.items() if v is not None})

    def finish(self, st: "TrainState") -> dict:
        from rich.table import Table

        summary = {"run": self.run_name, "steps": st.step, "tokens": st.tokens,
                   "wall_s": round(time.perf_counter() - self.t0, 3), "steps_per_epoch": self.order.steps_per_epoch,
                   "final_val_loss": next((r["val_loss"] for r in reversed(self.metrics.rows)
                                           if r.get("val_loss") is not None), None),
                   "stopped_by_until": st.stopped, "settings": asdict(self.s)}
        if self.trackers:
            self.acc.end_training()
        if self.main:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=1))
            from surgery.train.curves import plot_run

            plot_run(self.out)
            table = Table(title=f"{self.run_name}: {st.step} steps, {st.tokens:,} tokens, "
                                f"{summary['wall_s']:.1f} s")
            for name, justify in (("stage", "right"), ("model", "left"), ("dims", "left"), ("to step", "right"),
                                  ("val loss", "right"), ("wall s", "right")):
                table.add_column(name, justify=justify, overflow="fold")
            for index, name, dims, step, _tokens, vl, wall in self.stage_rows:
                table.add_row(str(index), name, dims, str(step), fmt_loss(vl), f"{wall:.1f}")
            if self.stage_rows:
                self.ui.table(table)
        return summary


@dataclass
class TrainState:
    """Where a run is: all a checkpoint holds besides weights, optimizer state and RNG states
    (trainer_state.json). `metrics_lines` is how much of metrics.jsonl the checkpoint has seen."""

    segment: int = 0
    step: int = 0
    tokens: int = 0
    wall_s: float = 0.0
    metrics_lines: int = 0
    stopped: bool = False

    @classmethod
    def of(cls, raw: dict) -> "TrainState":
        return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})


class _Wrapped:
    """A DDP-wrapped model as the objectives use it: calls go through DDP (its gradient hooks),
    attributes (get_input_embeddings, config) come from the model inside."""

    def __init__(self, wrapped, inner):
        self._wrapped, self._inner = wrapped, inner

    def __call__(self, *args, **kwargs):
        return self._wrapped(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)


class RunInterrupted(Exception):
    """SIGINT or SIGTERM during training: a checkpoint at the current step was (or could not be) saved."""

    def __init__(self, signal_name: str, step: int, saved: bool):
        super().__init__(f"{signal_name} at step {step}")
        self.signal_name, self.step, self.saved = signal_name, step, saved


class _Signals:
    """While training runs, SIGINT and SIGTERM only set `received`: the loop saves a checkpoint
    at the end of the current step, then stops. A second signal stops at once."""

    def __init__(self):
        self.received: str | None = None
        self.armed = False  # before training (data, tokenizer) there is nothing to save: stop at once
        self.launched = int(os.environ.get("WORLD_SIZE", "1") or 1) > 1
        self.at = 0.0
        self._old = {}

    def _handle(self, signum, frame):
        if not self.armed:
            raise KeyboardInterrupt
        if self.received is not None:
            # Under torchrun a Ctrl-C reaches each worker twice (from the terminal, then forwarded
            # by torchrun): a repeat within a second is that echo, not a second request.
            if self.launched and time.monotonic() - self.at < 1.0:
                return
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        self.at = time.monotonic()

    def __enter__(self) -> "_Signals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
