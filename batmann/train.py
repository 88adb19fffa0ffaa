"""Episodic training of a BATMANN controller, resumable after any interruption.

A run folder holds:

- ``last.safetensors``: model, optimizer, scheduler, generator states and the episode counter,
  rewritten atomically every ``checkpoint_interval`` episodes (and at the end or on Ctrl-C);
- ``best.safetensors`` (+ ``best.json``): the weights with the best validation accuracy;
- ``train.log``: the log; ``best.eval.json``: the test result of the best weights.

Episode ``i`` of a run is drawn from a generator seeded with ``(seed, i)``, so a resumed run
sees exactly the episodes an uninterrupted one would, and reproduces its weights bit for bit.
"""

from __future__ import annotations

import logging
import os
import platform
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from batmann.checkpoint import build_model, load_checkpoint, load_train_state, save_checkpoint, save_train_state
from batmann.config import TrainConfig
from batmann.errors import ConfigError
from batmann.evaluate import DigitalSystem, EvalResult, evaluate_model, evaluate_system, image_ids
from batmann.frozen_trunk import CachedTrunkSystem, TrunkCache, cached_depth, freeze_layers
from batmann.memory import class_logits, quantize_keys, sharpened_attention
from batmann.records import eval_settings, save_eval_result
from batmann.data.augment import augment_episode
from batmann.tasks import make_sampler
from batmann.utils.atomic import atomic_write_json
from batmann.models.fused import compiled_kernels
from batmann.models.layers import describe_training_path
from batmann.utils.determinism import deterministic_kernels
from batmann.utils.device import describe_device, resolve_device
from batmann.utils.seeding import seed_everything

VAL_SEED_OFFSET = 1_000_003
TEST_SEED_OFFSET = 2_000_003
NLL_FLOOR = 1e-12  # keeps log() finite if a class attention underflows to 0


@dataclass
class TrainResult:
    run_dir: Path
    episodes_done: int
    best_val_pct: float
    test: EvalResult | None
    seconds: float


def _logger(run_dir: Path) -> logging.Logger:
    log = logging.getLogger(f"batmann.train.{run_dir.resolve()}")
    log.setLevel(logging.INFO)
    log.propagate = False
    if not log.handlers:
        fh = logging.FileHandler(run_dir / "train.log")
        fh.setFormatter(logging.Formatter("%(asctime)s | %(message)s", "%Y-%m-%d %H:%M:%S"))
        log.addHandler(fh)
    return log


def _autocast(config: TrainConfig, device: torch.device):
    if config.autocast_bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def train_step(model: torch.nn.Module, episode, sim_cal: str, config: TrainConfig,
               device: torch.device, trunk: TrunkCache | None = None) -> tuple[torch.Tensor, float]:
    """Forward one episode (supports and queries in one batch); returns (loss, accuracy).

    ``trunk``: the frozen conv prefix's cache (only the layers above it run). With
    ``config.train_keys`` other than ``real`` the features are quantised as at inference, with a
    straight-through gradient (where ``|feature| <= config.ste_clip``; everywhere if 0), before
    the similarity.
    """
    n_s = episode.support.shape[0]
    images = torch.cat([episode.support, episode.query])
    if trunk is not None:
        ids = image_ids(torch.cat([episode.support_index, episode.query_index]), episode.rotation)
        x = trunk(images, ids)
        with _autocast(config, device):
            feats = trunk.head(x)
    else:
        if config.effective_precision == "bf16":  # channels-last throughout: oneDNN's fast layout
            images = images.contiguous(memory_format=torch.channels_last)
        with _autocast(config, device):
            feats = model(images)
    feats = quantize_keys(feats.float(), config.train_keys, ste=True, clip=config.ste_clip)
    keys, queries = feats[:n_s], feats[n_s:]
    ways = config.episodes.class_num
    att = sharpened_attention(queries, keys, sim_cal)
    logits = class_logits(att, episode.support_labels, ways)
    if config.loss == "nll":  # the class attention sums to 1 per query: its log is a log-likelihood
        loss = F.nll_loss(torch.log(logits.clamp_min(NLL_FLOOR)), episode.query_labels)
    else:  # the seed's: cross-entropy that treats the class attention (in [0, 1]) as logits
        loss = F.cross_entropy(logits, episode.query_labels)
    acc = (logits.argmax(1) == episode.query_labels).float().mean().item()
    return loss, acc


def hardware_aware_step(model: torch.nn.Module, episode, chip, config: TrainConfig,
                        device: torch.device) -> tuple[torch.Tensor, float]:
    """:func:`train_step` with the controller on the programmed ``chip``; returns (loss, the
    chip's accuracy). With ``config.hardware_aware.digital_weight`` w > 0 the loss is
    ``chip_loss + w * digital_loss``, the digital forward of the same episode added."""
    with chip:
        loss, acc = train_step(model, episode, config.sim_cal, config, device)
    w = config.hardware_aware.digital_weight
    if w:
        digital_loss, _ = train_step(model, episode, config.sim_cal, config, device)
        loss = loss + w * digital_loss
    return loss, acc


def chip_in_the_loop(model: torch.nn.Module, config: TrainConfig):
    """The :class:`crossbar.in_the_loop.ChipInTheLoop` of ``config.hardware_aware`` over the
    controller's weight layers (``conv1`` ... ``fc1``), or None when it is off."""
    if not config.hardware_aware.enabled:
        return None
    from crossbar.in_the_loop import ChipInTheLoop

    from batmann.models.export import WEIGHT_LAYER_TYPES
    from batmann.models.layers import export_layer

    layers = {n: m for n, m in model.features.named_children() if isinstance(m, WEIGHT_LAYER_TYPES)}
    layers["fc1"] = model.fc1
    return ChipInTheLoop(config.hardware_aware.hardware_spec(), layers, export_layer, config.hardware_aware.redraw)


def validate(model: torch.nn.Module, config: TrainConfig, cache, device: torch.device,
             trunk: TrunkCache | None = None) -> EvalResult:
    """Accuracy on ``val_episode`` fixed episodes from the training characters: supports from
    the support pool, queries from the validation pool, inference key mode as at test time.
    ``trunk``: the frozen trunk's cache, reused for the validation images."""
    sampler = make_sampler(cache, config.episodes, "train", config.seed + VAL_SEED_OFFSET, device)
    if trunk is not None:
        system = CachedTrunkSystem(model, trunk, keys=config.keys)
    else:
        system = DigitalSystem(model, keys=config.keys, cache_features=False,
                               autocast=config.autocast_bf16)
    was_training = model.training
    try:
        return evaluate_system(system, sampler, config.val_episode, use_val=True, desc="validate")
    finally:
        model.train(was_training)


def test(model: torch.nn.Module, config: TrainConfig, cache, device: torch.device,
         episodes: int, seed: int | None = None, progress: bool = False) -> EvalResult:
    """Accuracy on ``episodes`` test episodes (test characters, test query pool); ``seed``
    defaults to the run's test seed (``config.seed + TEST_SEED_OFFSET``)."""
    seed = config.seed + TEST_SEED_OFFSET if seed is None else seed
    return evaluate_model(model, config, cache, device, episodes, seed, progress=progress)


def provenance(config: TrainConfig, episodes_done: int, seconds: float, command: str | None,
               extra: dict[str, Any] | None = None, device: str | None = None) -> dict[str, Any]:
    """Who made a checkpoint, how, and on what (``device``: where it trained, as
    :func:`~batmann.utils.device.describe_device` names it)."""
    from batmann import __version__

    return {
        "batmann_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        **({"device": device} if device is not None else {}),
        "episodes_trained": episodes_done,
        "train_seconds": round(seconds, 1),
        "command": command,
        **(extra or {}),
    }


class Terminated(KeyboardInterrupt):
    """A stop requested by SIGTERM or Ctrl-C, honoured at the next episode boundary."""


class _StopAtEpisodeBoundary:
    """While training (main thread only), SIGTERM and SIGINT ask the loop to stop after the
    current episode, so the saved state is always a whole number of episodes; a second signal
    stops at once (the last periodic checkpoint stays). ``kill PID`` therefore stops a background
    run cleanly, which matters because background jobs of a non-interactive shell ignore SIGINT."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        print("\nstopping after this episode (signal again to stop at once)", file=sys.stderr, flush=True)

    def install(self) -> "_StopAtEpisodeBoundary":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._old[sig] = signal.signal(sig, self._handler)
        return self

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def check(self) -> None:
        if self.signum is not None:
            raise Terminated(f"signal {self.signum}")


def init_weights(model: torch.nn.Module | None, config: TrainConfig) -> dict[str, Any]:
    """Copy the weights of ``config.init_from`` into ``model`` (same architecture, else a one-line
    error; ``None``: only read the record); returns what the provenance records about the parent."""
    parent = load_checkpoint(config.init_from, "cpu", expect=config)
    if model is not None:
        model.load_state_dict(parent.model.state_dict())
    prov = parent.provenance
    record = {"name": config.init_from, "file": parent.path.name,
              "episodes_trained": prov.get("episodes_trained"),
              "train_seconds": prov.get("train_seconds"),
              "command": prov.get("command"),
              "task": f"{parent.config.episodes.tag} split {parent.config.episodes.split}"}
    if prov.get("init_from"):  # the parent was fine-tuned too: keep the whole chain
        record["init_from"] = prov["init_from"]
    return {"init_from": record}


def lock_run_dir(run_dir: Path):
    """Hold an exclusive lock on ``run_dir`` (``.lock``, released when the returned file is
    closed or the process ends); a folder locked by another process is a one-line error, so two
    runs can never write into one folder. No-op where ``fcntl`` is missing (Windows)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        return None
    fh = open(run_dir / ".lock", "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        pid = fh.read().strip() or "?"
        fh.close()
        raise ConfigError(f"run folder {run_dir} is in use by another training process (pid {pid}); "
                          "stop it first or choose another --run-dir") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def train(config: TrainConfig, run_dir: str | Path, resume: bool = False, progress: bool = True,
          cache=None, command: str | None = None) -> TrainResult:
    """Train a controller under ``config`` into ``run_dir``.

    With ``resume`` and an existing ``last.safetensors``, training continues from the last
    saved episode with every state restored; without ``resume`` an existing run is refused, and
    so is a folder that another process is training into.
    """
    config.validate()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_run_dir(run_dir)
    try:
        with deterministic_kernels(resolve_device(config.device), config.deterministic), \
                compiled_kernels(config.effective_compile):
            return _train(config, run_dir, resume, progress, cache, command)
    finally:
        if lock is not None:
            lock.close()


def _train(config: TrainConfig, run_dir: Path, resume: bool, progress: bool, cache,
           command: str | None) -> TrainResult:
    from tqdm import tqdm

    last_path = run_dir / "last.safetensors"
    if last_path.exists() and not resume:
        raise ConfigError(f"run folder {run_dir} already holds a run; pass --resume to continue it "
                          "or choose another --run-dir")
    device = resolve_device(config.device)
    device_name = describe_device(device)  # for the provenance of every checkpoint this run saves
    log = _logger(run_dir)
    seed_everything(config.seed)
    if cache is None:
        from batmann.data import load_episode_images

        cache = load_episode_images(config.episodes.dataset, config.model.image_size)
    sampler = make_sampler(cache, config.episodes, "train", config.seed, device)

    model = build_model(config).to(device)
    if config.effective_precision == "bf16":
        model = model.to(memory_format=torch.channels_last)
    trainable = freeze_layers(model, config.freeze)
    depth = cached_depth(model, config.freeze)
    trunk = TrunkCache(model, config.autocast_bf16, depth) if depth else None
    optimizer = torch.optim.Adam(trainable, lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_gamma)

    start, best_val, elapsed = 0, -1.0, 0.0
    run_loss = run_acc = 0.0
    parent: dict[str, Any] = {}
    if resume and last_path.exists():
        scalars = load_train_state(last_path, model, optimizer, scheduler, config)
        start, best_val, elapsed = scalars["episode"], scalars["best_val_pct"], scalars["seconds"]
        if config.init_from:  # the saved state holds the weights; the parent only names itself
            parent = scalars.get("parent") or init_weights(None, config)
        log.info("resumed from %s at episode %d (best validation %.2f%%)", last_path, start, best_val)
    else:
        log.info("config %s", config.to_dict())
        log.info("precision %s (asked: %s); compiled kernels %s (asked: %s)", config.effective_precision,
                 config.precision, "on" if config.effective_compile else "off", config.compile)
        log.info("convolutions train with %s",
                 describe_training_path(config.model.controller, config.effective_precision, device))
        if config.freeze:
            log.info("frozen layers %s%s", ",".join(config.freeze),
                     f" ({','.join(trunk.layers)} outputs cached)" if trunk is not None else "")
        if config.init_from:
            parent = init_weights(model, config)
            log.info("initial weights from %s", parent["init_from"])
    atomic_write_json(run_dir / "config.json", config.to_dict())

    chip = chip_in_the_loop(model, config)
    if chip is not None:
        log.info("hardware-aware: chip %s, new devices every %d episode(s), digital loss weight %g; "
                 "validation on one fixed chip", chip.spec.describe(), chip.redraw,
                 config.hardware_aware.digital_weight)

    def keep_if_best(done: int) -> None:
        nonlocal best_val
        val = validate(model, config, cache, device, trunk)
        log.info("episode %d validation %.2f%% +- %.2f", done, val.accuracy_pct, val.ci95_pct)
        if chip is not None:  # the weights are kept for the chip: select them on one
            from crossbar.in_the_loop import VALIDATION_DRAW

            chip.program(done, draw=VALIDATION_DRAW)
            with chip:
                val = validate(model, config, cache, device, trunk)
            log.info("episode %d validation on the chip %.2f%% +- %.2f", done, val.accuracy_pct, val.ci95_pct)
        if val.accuracy_pct > best_val:
            best_val = val.accuracy_pct
            save_checkpoint(run_dir / "best.safetensors", model, config,
                            provenance(config, done, elapsed + time.perf_counter() - t0, command,
                                       {"val_accuracy_pct": val.accuracy_pct, **parent}, device_name))
            log.info("episode %d new best: saved best.safetensors", done)

    def save_last(episode: int) -> None:
        save_train_state(last_path, model, optimizer, scheduler, config,
                         {"episode": episode, "best_val_pct": best_val,
                          "seconds": elapsed + time.perf_counter() - t0, "parent": parent})

    t0 = time.perf_counter()
    if parent and start == 0 and config.val_episode:  # fine-tuning never ends below its start
        keep_if_best(0)
    model.train()
    episode = start
    bar = tqdm(range(start, config.train_episode), initial=start, total=config.train_episode,
               desc="train", disable=not progress, dynamic_ncols=True)
    done = start
    stop = _StopAtEpisodeBoundary().install()
    try:
        for episode in bar:
            ep = augment_episode(sampler.sample(index=episode), config.augment, config.seed, episode)
            model.begin_episode(episode, config.train_episode)  # RBNN schedule and rotations
            if chip is not None:
                chip.program(episode)
                loss, acc = hardware_aware_step(model, ep, chip, config, device)
            else:
                loss, acc = train_step(model, ep, config.sim_cal, config, device, trunk)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            run_loss = 0.98 * run_loss + 0.02 * loss.item() if episode > start else loss.item()
            run_acc = 0.98 * run_acc + 0.02 * acc if episode > start else acc
            bar.set_postfix(loss=f"{run_loss:.3f}", acc=f"{100 * run_acc:.1f}%")
            done = episode + 1
            if done % config.log_interval == 0:
                log.info("episode %d loss %.4f running-acc %.2f%% lr %.2e", done, run_loss, 100 * run_acc,
                         scheduler.get_last_lr()[0])
            if config.val_episode and done % config.val_interval == 0:
                keep_if_best(done)
            if done % config.checkpoint_interval == 0:
                save_last(done)
            stop.check()
        episode = config.train_episode
    except Terminated:
        save_last(done)
        log.info("stopped after episode %d; resume with --resume", done)
        raise
    except KeyboardInterrupt:
        log.info("stopped at once during episode %d; --resume continues from the last checkpoint", done + 1)
        raise
    finally:
        stop.restore()
        bar.close()
    save_last(episode)
    seconds = elapsed + time.perf_counter() - t0
    log.info("training finished: %d episodes in %.0f s", episode, seconds)
    best_path = run_dir / "best.safetensors"
    if not best_path.exists():  # no validation ran: the final weights are the result
        save_checkpoint(best_path, model, config, provenance(config, episode, seconds, command, parent, device_name))
    result = None
    if config.test_episode:
        best = load_checkpoint(best_path, device)
        result = test(best.model, config, cache, device, config.test_episode, progress=progress)
        log.info("test (best weights) %.2f%% +- %.2f over %d episodes", result.accuracy_pct,
                 result.ci95_pct, result.episodes)
        settings = eval_settings(config.episodes, config.keys, config.test_episode, config.seed + TEST_SEED_OFFSET)
        save_eval_result(best_path, result, settings, command or "batmann.train.train(...)")
    return TrainResult(run_dir=run_dir, episodes_done=episode, best_val_pct=best_val, test=result,
                       seconds=seconds)
