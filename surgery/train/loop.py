"""The staged pretraining loop: train a segment, grow weights and optimizer state, go on.

Runs on one CPU, one GPU, or several through `accelerate launch` (bf16 where the device has it).
Everything that decides a step's outcome (batch, masks, LR, dropout RNG) is restored from a
checkpoint, so a resumed run ends with the weights an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import threading
import time
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
from surgery.train.schedule import LrCurve, RunSettings, Segment
from surgery.train.tokenizer import get_tokenizer


def tracker(name: str, out: Path) -> str:
    """The Accelerate tracker for report_to=NAME, set to write inside the run folder and offline
    (W&B offline mode, MLflow file store) unless the environment already says otherwise."""
    import os

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
        self.ui = console or RunConsole(quiet=quiet)
        self.val_losses: list[float] = []  # every validation so far, to say what a growth changed
        self.stage_rows: list[tuple] = []  # the final summary table
        self.pending_grow = (None, None)
        self.trackers = False
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
        source = load_checkpoint(seg.init_from)
        if source.spec.model_copy(update={"head": declared.head}) != declared:
            raise SurgeryError(f"pretrained checkpoint {seg.init_from} is {source.spec.describe()}, "
                               f"but the recipe declares {declared.describe()}")
        model, note = with_pretraining_head(source.model())
        if note:
            self.ui.line(f"pretrained {seg.init_from}: {note}")
        chain = seg.init_chain or (((seg.grow, seg.init_spec, seg.spec),) if seg.grow is not None else ())
        for growth, src_spec, dst_spec in chain:
            model = self.grow(model, src_spec, dst_spec, growth, self.s.seed if growth.seed is None else growth.seed)[0]
        return self.as_objective_class(model)

    def transform(self, model, src_spec, dst_spec, growth, seed):
        """One op of the chain in memory: a growth (surgery.ops) or a compression (surgery.compress).
        A distil op keeps the model it starts from as the teacher of the stage that follows."""
        from surgery.compress import COMPRESS_OPS, compress_model
        from surgery.ops import grow_model

        if growth.op not in COMPRESS_OPS:
            return grow_model(model, src_spec, dst_spec, growth.op, seed=seed, options=growth.options).model
        new = compress_model(model.cpu(), src_spec, dst_spec, growth.op, growth.options)
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
                teacher = self.grow(teacher, src_spec, dst_spec, growth, self.s.seed if growth.seed is None else growth.seed)[0]
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
        if self.aux is not None:
            self.aux.to(self.acc.device).train()

    def as_objective_class(self, model):
        """The model as the class its objective trains (sop: *ForPreTraining, with its head)."""
        from surgery.train.bert_objectives import as_model_kind

        return as_model_kind(model, self.objective.model_kind)

    def loss(self, model, batch, train: bool = True):
        if self.distil is not None:
            return self.distil(model, batch, train=train)
        return self.objective.loss(model, self.aux, batch)

    @torch.no_grad()
    def validate(self, model) -> float:
        model.eval()
        if self.aux is not None:
            self.aux.eval()
        total, n = 0.0, 0
        for batch in self.val:
            batch = {k: v.to(self.acc.device) for k, v in batch.items()}
            with self.acc.autocast():
                loss, count = self.loss(model, batch, train=False)
            total += float(loss) * count
            n += count
        model.train()
        if self.aux is not None:
            self.aux.train()
        return total / max(1, n)

    def stage_dir(self, seg: Segment, index: int) -> Path:
        return self.out / "stages" / f"{index}-{seg.name}"

    def save_stage(self, model, seg: Segment, index: int) -> Path:
        folder = self.stage_dir(seg, index)
        if not self.acc.is_main_process:
            return folder
        tmp = folder.with_name(folder.name + ".tmp")
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
            self.prepare_data(self.ui.progress)
            self.keep_tokenizer()
            spe = self.order.steps_per_epoch
            self.bounds = [seg.steps(spe) for seg in self.segments]
            if any(end <= start for start, end in self.bounds):
                raise SurgeryError(f"with {spe} steps per epoch a stage would train for no steps: {self.bounds}")
            self.total = self.bounds[-1][1]
            self.curve = LrCurve.of(self.s, self.total, spe)
            self.aux, self.distil, self.aux_is_distil = None, None, False
            st, model, at = self.start_or_resume()
            self.metrics = MetricsLog(self.out / "metrics.jsonl", st.metrics_lines if model is not None else None,
                                      write=self.main)
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
            if root.exists():
                shutil.rmtree(root)
            transformers.set_seed(self.s.seed)
            return TrainState(), None, -1
        latest = ckpt.latest_checkpoint(root)
        if latest is None:
            raise SurgeryError(f"--resume: no complete checkpoint in {root}; run without --resume to start afresh")
        from surgery.compress import load_model

        raw, self.opt_state, self.rng = ckpt.read_checkpoint(latest)
        st = TrainState.of(raw)
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
        if model is None:
            model = self.first_model(seg)
            grown = seg.grow is not None
            self.opt_state = None
        elif at == index - 1:
            prev = self.segments[index - 1]
            seed = self.s.seed + index if seg.grow.seed is None else seg.grow.seed
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
        model.train()
        self.stage_aux(model, self.aux_weights)
        self.aux_weights = None
        optimizer = make_optimizer(model, self.s, self.aux)
        if self.opt_state:
            ckpt.load_optimizer_state(optimizer, model, self.opt_state)
        if self.aux is not None and self.aux_opt:
            ckpt.load_optimizer_state(optimizer, self.aux, self.aux_opt)
        self.aux_opt = {}  # only the resumed stage continues from the checkpoint
        if self.rng is not None:  # the dropout RNG where the checkpoint left it
            ckpt.restore_rng(self.rng)
            self.rng = None
        model, optimizer = self.acc.prepare(model, optimizer)
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
        from surgery.compress import COMPRESS_OPS
        from surgery.ops import grow_model

        if growth.op in COMPRESS_OPS:
            return self.transform(model, src_spec, dst_spec, growth, seed), None
        result = grow_model(model.cpu(), src_spec, dst_spec, growth.op, seed=seed, options=growth.options)
        return result.model, (result.grow_optimizer_state(opt_state) if opt_state else None)

    def train_steps(self, index: int, model, optimizer, st: "TrainState") -> bool:
        """The segment's optimizer steps from st.step. False: stopped early (stop_after_step)."""
        seg = self.segments[index]
        seg_start, seg_end = self.bounds[index]
        spe = self.order.steps_per_epoch
        tick, recent = time.perf_counter(), []
        every = self.s.ckpt_every or self.s.val_every
        while st.step < seg_end and not st.stopped:
            if self.signals.received:
                self.interrupted(index, model, optimizer, st)
            lr = self.curve(st.step, grown_at=seg_start if index > 0 else None)
            for g in optimizer.param_groups:
                g["lr"] = lr
            loss_sum = 0.0
            for micro in range(self.s.grad_accum):
                idx = self.order.indices(st.step, micro)
                batch = self.objective(self.train_blocks[idx], step_rng(self.s.seed, st.step, micro),
                                       block_ids=idx, epoch=st.step // spe)
                # Several processes (accelerate launch) each take their rows of the one
                # global batch, so the data seen per step does not depend on the count.
                n, rank = self.acc.num_processes, self.acc.process_index
                batch = {k: (v[rank::n] if v.dim() else v).to(self.acc.device) for k, v in batch.items()}
                with self.acc.autocast():
                    loss = self.loss(model, batch)[0] / self.s.grad_accum
                self.acc.backward(loss)
                loss_sum += float(loss.detach())
            if not math.isfinite(loss_sum):  # before the step: the weights in memory stay finite too
                self.diverged(index, st, loss_sum, "training loss")
            if self.s.max_grad_norm:
                params = list(model.parameters()) + (list(self.aux.parameters()) if self.aux is not None else [])
                norm = self.acc.clip_grad_norm_(params, self.s.max_grad_norm)
                if norm is not None and not math.isfinite(float(norm)):
                    self.diverged(index, st, float(norm), "gradient norm")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            st.step += 1
            st.tokens += self.tokens_per_step
            recent.append(loss_sum)
            row = {"stage": index, "model": seg.name, "step": st.step, "tokens": st.tokens,
                   "train_loss": loss_sum, "lr": lr}
            validate_now = st.step % self.s.val_every == 0 or st.step == seg_end
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
            rate = self.tokens_per_step * len(recent) / max(1e-9, time.perf_counter() - tick)
            self.ui.advance(st.step, f"loss {np.mean(recent[-20:]):.3f}  {rate:,.0f} tok/s")
            if st.step % every == 0 or st.step == seg_end or st.stopped:
                self.checkpoint(index, model, optimizer, st)
            if self.stop_after_step is not None and st.step >= self.stop_after_step:
                return False
        return True

    # -- checkpoints and the ways a run stops -------------------------------------------------
    def checkpoint(self, index: int, model, optimizer, st: "TrainState") -> bool:
        """Write a checkpoint at st.step. A write that fails (disk full, no permission) leaves the
        previous checkpoint as it was; the run says why and goes on."""
        st.segment, st.wall_s, st.metrics_lines = index, time.perf_counter() - self.t0, self.metrics.count
        ok = True
        latest = ckpt.latest_checkpoint(self.out / "checkpoints")
        if latest is not None and {**ckpt.read_state(latest), "wall_s": st.wall_s} == asdict(st):
            return True  # a signal right after a checkpoint: it already holds this very state
        if self.main:
            try:
                ckpt.save_checkpoint(self.out / "checkpoints", st.step, self.acc.unwrap_model(model), optimizer,
                                     asdict(st), aux=self.aux)
            except (OSError, SafetensorError) as err:
                ok = False
                kept = ckpt.latest_checkpoint(self.out / "checkpoints")
                where = f"the previous one ({kept.name}) is kept" if kept else "there is no earlier one"
                why = f"{err.strerror}: {err.filename}" if getattr(err, "filename", None) else (
                    getattr(err, "strerror", None) or str(err))
                self.ui.warn(f"checkpoint at step {st.step} not written ({why}); {where}")
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
        self._old = {}

    def _handle(self, signum, frame):
        if self.received is not None or not self.armed:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __enter__(self) -> "_Signals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
