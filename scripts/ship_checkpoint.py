"""Copy a run's best weights into the package as a shipped checkpoint (``batmann/checkpoints``).

Floating tensors are stored as fp16 when that changes nothing measurable: the fp16 and fp32
weights are evaluated on the same test episodes and fp16 is kept only if every prediction is
the same (else fp32 is shipped). The measurement goes into the checkpoint's provenance. The
shipped weights are then evaluated on ``--eval-episodes`` test episodes (episode seed 0, what
``batmann evaluate --checkpoint NAME`` draws; for a checkpoint trained on a fixed protocol's kind
of episode, e.g. Lake's, that protocol's) into ``NAME.eval.json`` beside them: the only
writer of the package's evaluation records (a user's evaluations go to ``$BATMANN_HOME``).

    .venv/bin/python scripts/ship_checkpoint.py runs/20w5s-binary 20w5s-binary [--check-episodes 100] [--eval-episodes 1000]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import torch

from batmann.checkpoint import SHIPPED_DIR, load_checkpoint, resolve_checkpoint, save_checkpoint
from batmann.config import protocol_options, trained_for_protocol
from batmann.data import load_image_cache
from batmann.errors import CheckpointError
from batmann.evaluate import DigitalSystem, evaluate_model, score_episode
from batmann.records import eval_settings, save_eval_result
from batmann.tasks import make_sampler


def predictions(model, config, cache, episodes: int) -> torch.Tensor:
    sampler = make_sampler(cache, config.episodes, "test", seed=12345)
    system = DigitalSystem(model, keys=config.keys)
    return torch.cat([score_episode(system, sampler.sample(index=i)).predictions for i in range(episodes)])


def parent_chain(parent: dict) -> dict | None:
    """The ``init_from`` record of the checkpoint that ``parent`` (a provenance ``init_from``
    record) names, when that checkpoint can still be read and is the same training run (same
    command and episode count); else None."""
    try:
        found = load_checkpoint(parent["name"]).provenance
    except CheckpointError:
        return None
    same = all(found.get(k) == parent.get(k) for k in ("command", "episodes_trained"))
    return found.get("init_from") if same else None


def complete_chain(parent: dict) -> dict:
    """``parent`` with every link of its fine-tuning chain that an older run did not record
    filled in from the checkpoints it names (see :func:`parent_chain`), as far as they can
    still be read."""
    if "init_from" in parent:
        deeper = parent["init_from"]
        return dict(parent, init_from=complete_chain(deeper)) if deeper else parent
    grand = parent_chain(parent)
    return dict(parent, init_from=complete_chain(grand)) if grand else parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="run folder or .safetensors file")
    ap.add_argument("name", help="short name, e.g. 20w5s-binary")
    ap.add_argument("--check-episodes", type=int, default=100)
    ap.add_argument("--eval-episodes", type=int, default=1000, help="test episodes of the record (0: none)")
    args = ap.parse_args()
    src = load_checkpoint(args.run)
    cache = load_image_cache(src.config.model.image_size)
    dest = SHIPPED_DIR / f"{args.name}.safetensors"
    provenance = dict(src.provenance, shipped_from=str(resolve_checkpoint(args.run)))
    if provenance.get("init_from"):  # runs trained before parents recorded their own chain lack links
        provenance["init_from"] = complete_chain(provenance["init_from"])
    save_checkpoint(dest, src.model, src.config, provenance, half=True)
    half = load_checkpoint(dest)
    ref = predictions(src.model, src.config, cache, args.check_episodes)
    got = predictions(half.model, half.config, cache, args.check_episodes)
    same = float((ref == got).float().mean())
    if same == 1.0:
        provenance["stored_as"] = f"fp16 (fp32 and fp16 predictions identical on {args.check_episodes} test episodes)"
        save_checkpoint(dest, src.model, src.config, provenance, half=True)
    else:
        provenance["stored_as"] = (f"fp32 (fp16 changed {100 * (1 - same):.3f} % of the predictions on "
                                   f"{args.check_episodes} test episodes)")
        save_checkpoint(dest, src.model, src.config, provenance, half=False)
    print(f"{dest}: {dest.stat().st_size / 1e6:.2f} MB, {provenance['stored_as']}")
    if args.eval_episodes > 0:
        shipped = load_checkpoint(dest)
        config, command = shipped.config, f"batmann evaluate --checkpoint {args.name} --episodes {args.eval_episodes}"
        protocol = trained_for_protocol(config.episodes)
        if protocol is not None:  # trained for a fixed protocol: its record is that protocol's
            config = replace(config, episodes=protocol_options(protocol, config.episodes))
            command += f" --protocol {protocol}"
        result = evaluate_model(shipped.model, config, cache, "cpu", args.eval_episodes, seed=0, progress=True)
        settings = eval_settings(config.episodes, config.keys, args.eval_episodes, 0)
        record = save_eval_result(dest, result, settings, command, out=dest.with_suffix(".eval.json"))
        print(f"{record}: {result.accuracy_pct:.2f} % +- {result.ci95_pct:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
