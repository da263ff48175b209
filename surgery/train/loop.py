"""The staged pretraining loop: train a segment, grow weights and optimizer state, go on.

Runs on one CPU, one GPU, or several through `accelerate launch` (bf16 where the device has it).
Everything that decides a step's outcome (batch, masks, LR, dropout RNG) is restored from a
checkpoint, so a resumed run ends with the weights an uninterrupted one would.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from surgery.errors import SurgeryError
from surgery.train import checkpoint as ckpt
from surgery.train.data import BatchOrder, step_rng, to_blocks, to_doc_blocks, tokenize_documents, validation_batches
from surgery.train.objectives import default_loss, make_objective
from surgery.train.schedule import LrCurve, RunSettings, Segment
from surgery.train.corpus import load_documents, resolve_corpus
from surgery.train.tokenizer import get_tokenizer


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
                 corpus_base: Path | None = None, stop_after_step: int | None = None):
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
        self.acc = Accelerator(mixed_precision=precision, cpu=not cuda)
        self.family = segments[0].spec.family
        self.vocab = segments[0].spec.vocab

    # -- data ---------------------------------------------------------------------------------
    def prepare_data(self, progress=None):
        s = self.s
        corpus = resolve_corpus(s.corpus, self.corpus_base)
        val_seed = s.seed if s.val_seed is None else s.val_seed
        train_docs, valid_docs = load_documents(corpus, seed=val_seed, val_fraction=s.val_fraction, max_docs=s.corpus_docs)
        self.tokenizer = get_tokenizer(corpus, train_docs, self.family, self.vocab)
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
        model = source.model()
        chain = seg.init_chain or (((seg.grow, seg.init_spec, seg.spec),) if seg.grow is not None else ())
        for growth, src_spec, dst_spec in chain:
            model = self.transform(model, src_spec, dst_spec, growth, self.s.seed if growth.seed is None else growth.seed)
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
                teacher = self.transform(teacher, src_spec, dst_spec, growth, self.s.seed if growth.seed is None else growth.seed)
        self.distil = self._distil_loss(teacher, student, seg.grow.options)

    def _distil_loss(self, teacher, student, options: dict):
        from surgery.distillation import build

        mask_id = getattr(self.objective, "mask_id", None)
        return build(options.get("style", "distilbert"), teacher, student, options, mask_id).to(self.acc.device)

    def stage_aux(self, model, aux_weights):
        """The modules trained beside the model in this stage: a distillation's (projections, tutor)
        while one runs, else the objective's heads (built once, kept across growth)."""
        if self.distil is not None:
            self.aux = self.distil.trainable
        elif self.aux is None or self.aux_is_distil:
            self.aux = self.objective.build_aux(model) if hasattr(self.objective, "build_aux") else None
        self.aux_is_distil = self.distil is not None
        if self.aux is not None and aux_weights is not None:
            self.aux.load_state_dict(aux_weights)
        if self.aux is not None:
            self.aux.to(self.acc.device).train()

    def as_objective_class(self, model):
        """The model as the class its objective trains (sop: *ForPreTraining, with its head)."""
        from surgery.train.bert_objectives import as_model_kind

        return as_model_kind(model, getattr(self.objective, "model_kind", "mlm"))

    def loss(self, model, batch, train: bool = True):
        if self.distil is not None:
            return self.distil(model, batch, train=train)
        fn = getattr(self.objective, "loss", None)
        return fn(model, self.aux, batch) if fn else default_loss(model, None, batch)

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
        if self.aux is not None:  # modules trained beside the model (not part of it)
            from safetensors.torch import save_file

            name = f"distil-{seg.grow.options.get('style', 'distilbert')}" if self.aux_is_distil else self.s.objective
            (tmp / "objective").mkdir()
            save_file(ckpt.module_tensors(self.aux), tmp / "objective" / f"{name}_heads.safetensors")
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
        return folder

    # -- the run ------------------------------------------------------------------------------
    def run(self) -> dict:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        from surgery.ops import grow_model

        self.out.mkdir(parents=True, exist_ok=True)
        if self.plan_json is not None:
            (self.out / "plan.json").write_text(json.dumps(self.plan_json, indent=1))
        progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[info]}"), TimeRemainingColumn(), disable=self.quiet, transient=False,
        )
        ckpt_root = self.out / "checkpoints"
        with progress:
            self.prepare_data(progress)
            spe = self.order.steps_per_epoch
            bounds = [seg.steps(spe) for seg in self.segments]
            segments = self.segments
            total = bounds[-1][1]
            curve = LrCurve.of(self.s, total, spe)
            if any(b[1] <= b[0] for b in bounds):
                raise SurgeryError(f"with {spe} steps per epoch a stage would train for no steps: {bounds}")
            state = {"segment": 0, "step": 0, "tokens": 0, "wall_s": 0.0, "metrics_lines": 0, "stopped": False}
            model, opt_state, resumed = None, None, False
            self.aux, aux_weights, aux_opt = None, None, {}
            self.distil, self.aux_is_distil = None, False
            latest = ckpt.latest_checkpoint(ckpt_root) if self.resume else None
            if self.resume and latest is None and ckpt_root.exists():
                raise SurgeryError(f"--resume: no complete checkpoint in {ckpt_root}")
            if latest is not None:
                state, opt_state, rng = ckpt.read_checkpoint(latest)
                from surgery.compress import load_model

                model = load_model(latest / "model")
                aux_weights, aux_opt = ckpt.read_aux(latest)
                self.restore_teacher(state["segment"], model)
                resumed = True
            elif ckpt_root.exists():
                shutil.rmtree(ckpt_root)
            metrics = MetricsLog(self.out / "metrics.jsonl", state["metrics_lines"] if resumed else None,
                                 write=self.acc.is_main_process)
            t0 = time.perf_counter() - state["wall_s"]
            task = progress.add_task("train", total=total, completed=state["step"], info="")
            step = state["step"]

            main = self.acc.is_main_process

            def log(row):
                if main:
                    metrics.write({"wall_s": round(time.perf_counter() - t0, 3), **row})

            last_stage = self.stage_dir(segments[state["segment"]], state["segment"])

            for index in range(state["segment"], len(segments)):
                seg = segments[index]
                seg_start, seg_end = bounds[index]
                if state["stopped"]:
                    break
                grown = False
                if model is None:
                    model = self.first_model(seg)
                    grown = seg.grow is not None
                elif not (resumed and step < seg_end and index == state["segment"]):
                    # The previous segment's model grows into this one (also when resuming at a
                    # segment boundary: the checkpoint holds the model before growth).
                    if step >= seg_end:
                        last_stage = self.stage_dir(seg, index)
                        if not last_stage.exists():
                            self.save_stage(model, seg, index)
                        continue
                    prev = segments[index - 1]
                    raw = self.acc.unwrap_model(model)
                    seed = self.s.seed + index if seg.grow.seed is None else seg.grow.seed
                    from surgery.compress import COMPRESS_OPS

                    self.distil = None  # a distillation ends with its stage
                    if seg.grow.op in COMPRESS_OPS:  # new parameters: a fresh AdamW
                        model, opt_state = self.transform(raw, prev.spec, seg.spec, seg.grow, seed), None
                    else:
                        grown_result = grow_model(raw.cpu(), prev.spec, seg.spec, seg.grow.op, seed=seed,
                                                  options=seg.grow.options)
                        keep = opt_state and self.s.optimizer_on_grow == "grow"
                        opt_state = grown_result.grow_optimizer_state(opt_state) if keep else None
                        model = grown_result.model
                    grown = True
                    log({"event": "grow", "stage": index, "model": seg.name, "op": seg.grow.op, "step": step,
                         "tokens": state["tokens"], "from": prev.name})
                resumed = False
                model = model.to(self.acc.device)
                model.train()
                self.stage_aux(model, aux_weights)
                aux_weights = None
                optimizer = make_optimizer(model, self.s, self.aux)
                if opt_state:
                    ckpt.load_optimizer_state(optimizer, model, opt_state)
                if self.aux is not None and aux_opt:
                    ckpt.load_optimizer_state(optimizer, self.aux, aux_opt)
                aux_opt = {}  # only the resumed stage continues from the checkpoint
                if latest is not None:
                    ckpt.restore_rng(rng)
                    latest = None
                model, optimizer = self.acc.prepare(model, optimizer)
                if grown or (step == seg_start and index == 0 and not metrics.rows):
                    vl = self.validate(model)
                    log({"stage": index, "model": seg.name, "step": step, "tokens": state["tokens"],
                         "train_loss": None, "val_loss": vl})
                progress.update(task, description=f"{index}:{seg.name}")
                tick, recent = time.perf_counter(), []
                while step < seg_end and not state["stopped"]:
                    lr = curve(step, grown_at=seg_start if index > 0 else None)
                    for g in optimizer.param_groups:
                        g["lr"] = lr
                    loss_sum = 0.0
                    for micro in range(self.s.grad_accum):
                        idx = self.order.indices(step, micro)
                        batch = self.objective(self.train_blocks[idx], step_rng(self.s.seed, step, micro),
                                               block_ids=idx, epoch=step // spe)
                        # Several processes (accelerate launch) each take their rows of the one
                        # global batch, so the data seen per step does not depend on the count.
                        n, rank = self.acc.num_processes, self.acc.process_index
                        batch = {k: (v[rank::n] if v.dim() else v).to(self.acc.device) for k, v in batch.items()}
                        with self.acc.autocast():
                            loss = self.loss(model, batch)[0] / self.s.grad_accum
                        self.acc.backward(loss)
                        loss_sum += float(loss.detach())
                    if self.s.max_grad_norm:
                        params = list(model.parameters()) + (list(self.aux.parameters()) if self.aux is not None else [])
                        self.acc.clip_grad_norm_(params, self.s.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    state["tokens"] += self.tokens_per_step
                    recent.append(loss_sum)
                    row = {"stage": index, "model": seg.name, "step": step, "tokens": state["tokens"],
                           "train_loss": loss_sum, "lr": lr}
                    validate_now = step % self.s.val_every == 0 or step == seg_end
                    if validate_now:
                        row["val_loss"] = self.validate(model)
                        target = self.s.until_val_loss
                        if target is not None and (row["val_loss"] < target if self.s.until_strict else row["val_loss"] <= target):
                            state["stopped"] = True
                            row["event"] = "until"
                    if validate_now or step % self.s.log_every == 0:
                        log({**row, **getattr(self.distil, "last", {})})
                    rate = self.tokens_per_step * len(recent) / max(1e-9, time.perf_counter() - tick)
                    progress.update(task, completed=step, info=f"loss {np.mean(recent[-20:]):.3f}  {rate:,.0f} tok/s")
                    every = self.s.ckpt_every or self.s.val_every
                    at_end = step == seg_end or state["stopped"]
                    if step % every == 0 or at_end:
                        state.update(segment=index, step=step, wall_s=time.perf_counter() - t0,
                                     metrics_lines=metrics.count)
                        if main:
                            ckpt.save_checkpoint(ckpt_root, step, self.acc.unwrap_model(model), optimizer, state,
                                                 aux=self.aux)
                        self.acc.wait_for_everyone()
                    if self.stop_after_step is not None and step >= self.stop_after_step:
                        return {"stopped_early": True, "step": step}
                opt_state = ckpt.optimizer_state_by_name(optimizer, self.acc.unwrap_model(model))
                last_stage = self.save_stage(model, seg, index)
            if not last_stage.exists():  # resumed from the last checkpoint, before its stage was saved
                last_stage = self.save_stage(model, segments[state["segment"]], state["segment"])
            final = self.out / "final"
            if main:
                shutil.rmtree(final, ignore_errors=True)
                shutil.copytree(last_stage, final)
        summary = {"run": self.run_name, "steps": step, "tokens": state["tokens"],
                   "wall_s": round(time.perf_counter() - t0, 3), "steps_per_epoch": spe,
                   "final_val_loss": next((r["val_loss"] for r in reversed(metrics.rows) if r.get("val_loss") is not None), None),
                   "stopped_by_until": state["stopped"], "settings": asdict(self.s)}
        if self.acc.is_main_process:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=1))
            from surgery.train.curves import plot_run

            plot_run(self.out)
        return summary
