"""Digital versus in-memory (RRAM crossbar) evaluation of a BATMANN checkpoint.

Both systems see the very same episodes. The in-memory system is ``crossbar.convert(checkpoint,
spec)``: the checkpoint exports its controller and brings its key codec, so keys and queries
are quantised exactly as digitally (the checkpoint's key mode) and the crossbar's dot products
are put on the digital similarity's scale by the same function (:func:`batmann.memory.scale_dots`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from batmann.checkpoint import Checkpoint, load_checkpoint
from batmann.config import EpisodeOptions
from batmann.errors import ConfigError
from batmann.evaluate import DigitalSystem, mean_ci95, score_episode


@dataclass
class Comparison:
    """Digital and crossbar accuracy on the same episodes, and how closely they agree."""

    digital_accuracy_pct: float
    digital_ci95_pct: float
    crossbar_accuracy_pct: float
    crossbar_ci95_pct: float
    top1_agreement: float
    score_correlation: float
    episodes: int
    seconds_digital: float
    seconds_crossbar: float
    hardware: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "digital": {"accuracy_pct": self.digital_accuracy_pct, "ci95_pct": self.digital_ci95_pct},
            "crossbar": {"accuracy_pct": self.crossbar_accuracy_pct, "ci95_pct": self.crossbar_ci95_pct},
            "difference_pp": self.crossbar_accuracy_pct - self.digital_accuracy_pct,
            "top1_agreement": self.top1_agreement,
            "score_correlation": self.score_correlation,
            "episodes": self.episodes,
            "seconds": {"digital": self.seconds_digital, "crossbar": self.seconds_crossbar},
            "hardware": self.hardware,
        }


class Pearson:
    """Streaming Pearson correlation of two equally long sequences of numbers."""

    def __init__(self) -> None:
        self.n = 0
        self.sx = self.sy = self.sxx = self.syy = self.sxy = 0.0

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = x.double().flatten(), y.double().flatten()
        self.n += x.numel()
        self.sx += x.sum().item()
        self.sy += y.sum().item()
        self.sxx += (x * x).sum().item()
        self.syy += (y * y).sum().item()
        self.sxy += (x * y).sum().item()

    def value(self) -> float:
        if self.n < 2:
            return float("nan")
        cov = self.sxy - self.sx * self.sy / self.n
        vx = self.sxx - self.sx ** 2 / self.n
        vy = self.syy - self.sy ** 2 / self.n
        if vx <= 0 or vy <= 0:
            return 1.0 if vx <= 0 and vy <= 0 else float("nan")
        return cov / math.sqrt(vx * vy)


ZERO_IS_OFF = ("variability", "stuck_lrs", "stuck_hrs")  # a 0 here means "no such non-ideality"


def hardware_spec(**fields):
    """A validated :class:`crossbar.HardwareSpec` from its fields (``to_dict`` form or the
    shortcuts: ``analog``, ``preset``, ``variability``, ``states``, ``stuck_lrs``, ``stuck_hrs``,
    ``adc_bits``, ``tile_shape``, ``seed``, ...), where 0 for variability or a stuck-at fraction
    means off, as on the command line; one-line error on bad values or unknown fields."""
    from crossbar import HardwareSpec

    return HardwareSpec.from_dict({k: None if k in ZERO_IS_OFF and v == 0 else v for k, v in fields.items()})


CALIBRATION_SEED = 3233  # episodes of training characters that set calibrated ADC ranges


def calibration_episodes(cache, opts: EpisodeOptions, count: int) -> list:
    """``count`` episodes of the *training* characters (never the test ones), drawn with
    :data:`CALIBRATION_SEED`: the data a chip's calibrated ADC ranges are set from."""
    from batmann.tasks import make_sampler

    sampler = make_sampler(cache, opts, "train", CALIBRATION_SEED)
    return [sampler.sample(index=i) for i in range(count)]


def calibrate(system, spec, cache, opts: EpisodeOptions) -> None:
    """Calibrate ``system``'s ADC ranges when ``spec`` asks for it (``adc_range`` calibrated)."""
    adc = spec.adc_spec
    if adc is not None and adc.calibrated:
        system.calibrate(calibration_episodes(cache, opts, adc.calibration_episodes))


def _prepare(checkpoint, episodes: int, episode_options: EpisodeOptions | None, cache):
    """The loaded checkpoint, its validated episode options and the image cache of a run of
    ``episodes`` test episodes (one-line error for fewer than one)."""
    if episodes < 1:
        raise ConfigError(f"episodes must be >= 1 (got {episodes})")
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint, "cpu")
    opts = (episode_options or ckpt.config.episodes).validate()
    if cache is None:
        from batmann.data import load_episode_images

        cache = load_episode_images(opts.dataset, ckpt.config.model.image_size)
    return ckpt, opts, cache


def compare(checkpoint: str | Checkpoint, spec, episodes: int = 200, seed: int = 0,
            episode_options: EpisodeOptions | None = None, progress: bool = False, cache=None,
            digital: DigitalSystem | None = None) -> Comparison:
    """Evaluate ``checkpoint`` digitally and on the crossbars of ``spec``, same episodes.

    ``seed`` draws the episodes; ``spec.seed`` draws the chip (variability, faults). Pass the
    ``digital`` system of an earlier call on the same checkpoint to reuse its cached features.
    """
    from tqdm import tqdm

    from batmann.tasks import make_sampler
    from crossbar import convert

    ckpt, opts, cache = _prepare(checkpoint, episodes, episode_options, cache)
    keys = ckpt.config.keys
    model = ckpt.model.cpu().eval()
    if digital is None or digital.model is not model:
        digital = DigitalSystem(model, keys=keys)
    t0 = time.perf_counter()
    # keys-only: the controller is digital, so both systems use the very same (cached) features
    analog = convert(ckpt, spec, digital_features=digital.features)
    calibrate(analog, spec, cache, opts)
    t_crossbar = time.perf_counter() - t0
    t_digital = 0.0
    sampler = make_sampler(cache, opts, "test", seed)
    acc_d, acc_a, agree, total = [], [], 0, 0
    corr = Pearson()
    bar = tqdm(range(episodes), desc="digital vs crossbar", disable=not progress, leave=False, dynamic_ncols=True)
    for i in bar:
        ep = sampler.sample(index=i)
        t0 = time.perf_counter()
        rd = score_episode(digital, ep)
        t1 = time.perf_counter()
        ra = score_episode(analog, ep)
        t2 = time.perf_counter()
        t_digital += t1 - t0
        t_crossbar += t2 - t1
        acc_d.append(rd.accuracy)
        acc_a.append(ra.accuracy)
        agree += int((rd.predictions == ra.predictions).sum())
        total += rd.predictions.numel()
        corr.add(rd.similarities, ra.similarities)
        if progress:
            bar.set_postfix(digital=f"{100 * sum(acc_d) / len(acc_d):.2f}%",
                            crossbar=f"{100 * sum(acc_a) / len(acc_a):.2f}%")
    md, cd = mean_ci95(acc_d)
    ma, ca = mean_ci95(acc_a)
    return Comparison(digital_accuracy_pct=md, digital_ci95_pct=cd, crossbar_accuracy_pct=ma,
                      crossbar_ci95_pct=ca, top1_agreement=agree / max(total, 1),
                      score_correlation=corr.value(), episodes=episodes, seconds_digital=t_digital,
                      seconds_crossbar=t_crossbar,
                      hardware={**spec.describe(), "keys": keys, "ways": opts.class_num,
                                "shots": opts.num_shot, "episode_seed": seed})


def format_comparison(c: Comparison, name: str = "") -> str:
    """A small text table of a :class:`Comparison`."""
    h = c.hardware
    lines = [
        f"{name} {h.get('ways')}-way {h.get('shots')}-shot, {h.get('keys')} keys, {c.episodes} episodes".strip(),
        f"{'system':<10} {'accuracy (%)':>14}  {'95% CI':>7}",
        f"{'digital':<10} {c.digital_accuracy_pct:>14.2f}  {c.digital_ci95_pct:>7.2f}",
        f"{'crossbar':<10} {c.crossbar_accuracy_pct:>14.2f}  {c.crossbar_ci95_pct:>7.2f}",
        f"difference {c.crossbar_accuracy_pct - c.digital_accuracy_pct:+.2f} pp, top-1 agreement "
        f"{100 * c.top1_agreement:.2f} %, score correlation {c.score_correlation:.4f}",
    ]
    return "\n".join(lines)


def query_cost(checkpoint: str | Checkpoint, spec, episodes: int = 5, seed: int = 0,
               episode_options: EpisodeOptions | None = None, periphery=None, digital_mac: str = "int8",
               cache=None) -> dict[str, Any]:
    """Energy, latency and area per few-shot query of ``checkpoint`` on the chip ``spec``
    (:func:`crossbar.cost.estimate` on ``episodes`` test episodes drawn with ``seed``), with the
    digital baseline's MAC energy and its measured wall time per query image here. Returns the
    JSON-able report (see ``docs/cost-model.md``)."""
    from batmann.tasks import make_sampler
    from crossbar import convert
    from crossbar.cost import estimate

    ckpt, opts, cache = _prepare(checkpoint, episodes, episode_options, cache)
    model = ckpt.model.cpu().eval()
    digital = DigitalSystem(model, keys=ckpt.config.keys, cache_features=False)
    system = convert(ckpt, spec, digital_features=digital.features)
    calibrate(system, spec, cache, opts)
    sampler = make_sampler(cache, opts, "test", seed)
    eps = [sampler.sample(index=i) for i in range(episodes)]
    wall, n = 0.0, 0
    for ep in eps:  # the digital baseline, timed: features of every image, then the similarities
        t0 = time.perf_counter()
        with torch.no_grad():
            feats = digital.features(torch.cat([ep.support, ep.query]))
            digital.write(feats[:ep.support.shape[0]])
            digital.similarities(feats[ep.support.shape[0]:])
        wall += time.perf_counter() - t0
        n += ep.support.shape[0] + ep.query.shape[0]
    report = estimate(system, eps, periphery, digital_mac=digital_mac, digital_wall_s_per_query=wall / n)
    out = report.to_json()
    out["hardware"].update({"keys": ckpt.config.keys, "ways": opts.class_num, "shots": opts.num_shot,
                            "episodes": episodes, "episode_seed": seed})
    return out
