"""``batmann crossbar evaluate | presets``: digital versus RRAM-crossbar few-shot accuracy (grids
over many chips: ``batmann study``)."""

from __future__ import annotations

import argparse
import json

from batmann.cli.train_cmd import add_protocol_options
from crossbar.options import ANALOG_PARTS, CONV_ROW_ORDERS
from device_models.options import ADC_RANGES, DRIFT_COMPENSATIONS, IR_DROP_SOLVERS


def _tile(text: str) -> tuple[int, int]:
    try:
        r, c = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"tile shape {text!r} is not ROWSxCOLS, e.g. 128x128") from None
    return r, c


def add_hardware_options(p: argparse.ArgumentParser) -> None:
    """The chip's flags, named as the :class:`crossbar.HardwareSpec` fields; unset ones stay None
    (the spec file's value, else the field's default)."""
    g = p.add_argument_group("hardware (HardwareSpec fields)")
    g.add_argument("--preset", default=None, help="device preset (see `batmann crossbar presets`; default ideal)")
    g.add_argument("--analog", choices=ANALOG_PARTS, default=None, help="which parts run on crossbars (default keys)")
    g.add_argument("--variability", type=float, default=None, help="device-to-device relative sigma (default 0)")
    g.add_argument("--states", type=int, default=None, help="finite conductance levels (default continuous)")
    g.add_argument("--stuck-lrs", type=float, default=None, help="fraction of devices stuck at LRS (default 0)")
    g.add_argument("--stuck-hrs", type=float, default=None, help="fraction of devices stuck at HRS (default 0)")
    g.add_argument("--adc-bits", type=int, default=None, help="ADC resolution in bits (default: no ADC)")
    g.add_argument("--adc-range", choices=ADC_RANGES, default=None,
                   help="worst (the largest possible tile current, default), calibrated (per tile, at a percentile "
                        "of the currents on a few episodes of training characters) or calibrated_column")
    g.add_argument("--tile", dest="tile_shape", type=_tile, default=None, metavar="RxC",
                   help="tile shape, e.g. 128x128 (default: one array)")
    g.add_argument("--read-voltage", type=float, default=None, help="read voltage amplitude in V (default 0.2)")
    g.add_argument("--dac-bits", type=int, default=None, help="input DAC resolution in bits (default: exact voltages)")
    g.add_argument("--programming-noise", type=float, default=None, metavar="SIGMA",
                   help="write noise, sigma as a fraction of the device window, redrawn at every write (default 0)")
    g.add_argument("--read-noise", type=float, default=None, metavar="SIGMA",
                   help="read (cycle-to-cycle) noise, relative sigma per device and read (default 0)")
    g.add_argument("--drift-nu", type=float, default=None, metavar="MEAN",
                   help="conductance drift exponent nu: G(t) = G(t0) (t/t0)^-nu (default: no drift)")
    g.add_argument("--drift-nu-sigma", type=float, default=None, metavar="SIGMA",
                   help="device-to-device spread of nu (default 0)")
    g.add_argument("--time", default=None, metavar="T",
                   help="read time after programming the controller: seconds or 1h, 1d, 1y (default 1 s)")
    g.add_argument("--endurance", type=float, default=None, metavar="CYCLES",
                   help="median write cycles before a device wears out stuck (log-normal; default: no wear)")
    g.add_argument("--episodes-served", type=int, default=None, metavar="N",
                   help="with --endurance: write cycles the key memory has already had (default 0)")
    g.add_argument("--drift-compensation", choices=DRIFT_COMPENSATIONS, default=None,
                   help="none, or global: rescale each array's outputs by an all-ones reference read (default none)")
    g.add_argument("--wire-resistance", type=float, default=None, metavar="OHM",
                   help="IR drop: line resistance per cell-to-cell segment, ohms (default: ideal wires)")
    g.add_argument("--source-resistance", type=float, default=None, metavar="OHM",
                   help="with --wire-resistance: driver and sink resistance, ohms (default 0)")
    g.add_argument("--ir-drop-solver", choices=IR_DROP_SOLVERS, default=None,
                   help="exact (nodal solve), approx (line relaxation) or auto (exact up to 32x32 arrays; default)")
    g.add_argument("--conv-rows", choices=CONV_ROW_ORDERS, default=None,
                   help="word-line order of a convolution's weight rows: kernel ((kh, kw, c): a tile holds input "
                        "channels of one kernel position; default, fast with tiles and an ADC) or channel "
                        "((c, kh, kw), as PyTorch and MemTorch unfold)")


def add_periphery_options(p: argparse.ArgumentParser) -> None:
    """The cost model's flags, named as the :class:`device_models.periphery.Periphery` fields."""
    from device_models.periphery import DEFAULT_PERIPHERY, DIGITAL_MACS, PERIPHERY_PRESETS, TILE_SCHEDULES

    g = p.add_argument_group("cost model (Periphery fields; default: the preset's, with its sources)")
    g.add_argument("--periphery", choices=tuple(PERIPHERY_PRESETS), default=DEFAULT_PERIPHERY,
                   help=f"periphery constants (default {DEFAULT_PERIPHERY})")
    g.add_argument("--adc-fom-fj", type=float, default=None, help="ADC Walden figure of merit, fJ per conversion step")
    g.add_argument("--adc-rate-hz", type=float, default=None, help="conversions per second of one ADC")
    g.add_argument("--columns-per-adc", type=int, default=None, help="columns sharing one ADC")
    g.add_argument("--read-pulse-s", type=float, default=None, help="read (integration) time per array read, s")
    g.add_argument("--write-voltage-v", type=float, default=None, help="write pulse amplitude, V")
    g.add_argument("--write-pulse-s", type=float, default=None, help="write pulse width, s")
    g.add_argument("--write-pulses", type=int, default=None, help="pulses per device write (write-verify iterations)")
    g.add_argument("--tiles", dest="tile_schedule", choices=TILE_SCHEDULES, default=None,
                   help="the arrays of a layer read in parallel (default) or in series")
    g.add_argument("--digital-mac", choices=DIGITAL_MACS, default="int8",
                   help="MAC precision of the digital baseline (default int8)")


#: the periphery flags that set a Periphery field (flag attribute -> field)
PERIPHERY_FLAGS = {"adc_fom_fj": "adc_fom_fj", "adc_rate_hz": "adc_rate_hz", "columns_per_adc": "columns_per_adc",
                   "read_pulse_s": "read_pulse_s", "write_voltage_v": "write_voltage_v",
                   "write_pulse_s": "write_pulse_s", "write_pulses": "write_pulses", "tile_schedule": "tiles"}


def periphery_from_args(args: argparse.Namespace):
    """The :class:`device_models.periphery.Periphery` of ``--periphery`` with the set flags laid over it."""
    from device_models.periphery import get_periphery

    return get_periphery(args.periphery, **{f: getattr(args, a, None) for a, f in PERIPHERY_FLAGS.items()})


def hardware_flags() -> tuple[str, ...]:
    """The hardware flags: the preset, the analog part, the conv row order and every shortcut
    field of HardwareSpec (imports the simulators: called when a command runs, not to parse)."""
    from crossbar.spec import SHORTCUT_KINDS

    return ("preset", "analog", "conv_rows") + tuple(SHORTCUT_KINDS)


def spec_from_args(args: argparse.Namespace, seed: int):
    """The :class:`crossbar.HardwareSpec` of ``--spec FILE`` (if given) with every hardware flag
    that was set laid over it; ``seed`` is the chip's unless the file names one."""
    from batmann.hardware import hardware_spec
    from crossbar import HardwareSpec
    from crossbar.spec import SHORTCUT_KINDS
    from device_models.nonidealities import NONIDEALITY_TYPES

    base = HardwareSpec.load(args.spec).to_dict() if getattr(args, "spec", None) else {"seed": seed}
    given = {k: getattr(args, k) for k in hardware_flags() if getattr(args, k, None) is not None}
    items = base.get("nonidealities", {})
    for kind in {SHORTCUT_KINDS[f] for f in given if f in SHORTCUT_KINDS}:
        # a flag replaces the file's non-ideality of its kind; the kind's other shortcut fields
        # keep the file's values (e.g. --stuck-lrs keeps the file's stuck_hrs)
        old = items.pop(kind, None)
        if old is not None:
            for name, fld in NONIDEALITY_TYPES[kind].shortcuts.items():
                if name not in given and fld in old and name != "tile_shape":
                    given[name] = old[fld]
    return hardware_spec(**{**base, **given})


def register(sub: argparse._SubParsersAction) -> None:
    from batmann.cli import OneLineParser

    p = sub.add_parser("crossbar", help="evaluate a checkpoint on simulated RRAM crossbars",
                       description="Put a trained controller and/or its key memory on simulated RRAM crossbars "
                                   "(MemTorch) and compare with the digital system on the same episodes.")
    cs = p.add_subparsers(dest="crossbar_command", metavar="ACTION", parser_class=OneLineParser)
    cs.required = True
    e = cs.add_parser("evaluate", help="digital vs crossbar accuracy on the same episodes")
    e.add_argument("--checkpoint", default="20w5s-binary",
                   help="a shipped name, a .safetensors file or a run folder (default 20w5s-binary)")
    e.add_argument("--spec", default=None, metavar="FILE",
                   help="a hardware spec file (JSON or TOML, e.g. written by --save-spec); the flags below "
                        "override its fields, and its seed is the chip's")
    e.add_argument("--save-spec", default=None, metavar="FILE",
                   help="write the chip's full hardware spec to FILE (.toml or .json) before evaluating")
    add_hardware_options(e)
    e.add_argument("--episodes", type=int, default=200, help="episodes (default 200)")
    e.add_argument("--ways", type=int, default=None, help="m (default: the checkpoint's)")
    e.add_argument("--shots", type=int, default=None, help="n (default: the checkpoint's)")
    add_protocol_options(e, default=None)
    e.add_argument("--seed", type=int, default=0, help="seed of the episodes and of the chip (default 0)")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.set_defaults(func=run_evaluate)
    c = cs.add_parser("cost", help="energy, latency and area per few-shot query, against a digital processor",
                      description="Count what the chip's arrays and periphery do on real test episodes: array read "
                                  "energy from the programmed conductances and read voltages, ADC/DAC conversions, "
                                  "shift-and-add, key-memory writes; latency and area; and the digital baseline's "
                                  "MACs. Constants: --periphery (see docs/cost-model.md) and the flags below.")
    c.add_argument("--checkpoint", default="20w5s-binary",
                   help="a shipped name, a .safetensors file or a run folder (default 20w5s-binary)")
    c.add_argument("--spec", default=None, metavar="FILE", help="a hardware spec file; the flags below override it")
    add_hardware_options(c)
    add_periphery_options(c)
    c.add_argument("--episodes", type=int, default=5, help="test episodes averaged over (default 5)")
    c.add_argument("--seed", type=int, default=0, help="seed of the episodes and of the chip (default 0)")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.set_defaults(func=run_cost)
    pr = cs.add_parser("presets", help="list the RRAM device presets")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=run_presets)


def run_evaluate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from batmann.checkpoint import load_checkpoint
    from batmann.hardware import compare, format_comparison

    spec = spec_from_args(args, args.seed)
    if args.save_spec:
        spec.save(args.save_spec)
    ckpt = load_checkpoint(args.checkpoint, "cpu")
    opts = ckpt.config.episodes
    overrides = {k: v for k, v in (("class_num", args.ways), ("num_shot", args.shots),
                                   ("within_alphabet", args.within_alphabet),
                                   ("distinct_drawers", args.distinct_drawers)) if v is not None}
    result = compare(ckpt, spec, episodes=args.episodes, seed=args.seed,
                     episode_options=replace(opts, **overrides), progress=not args.json)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(format_comparison(result, ckpt.path.stem))
    return 0


def run_cost(args: argparse.Namespace) -> int:
    from batmann.hardware import query_cost

    periphery = periphery_from_args(args)
    spec = spec_from_args(args, args.seed)
    report = query_cost(args.checkpoint, spec, episodes=args.episodes, seed=args.seed, periphery=periphery,
                        digital_mac=args.digital_mac)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_cost(report, args.checkpoint))
    return 0


def format_cost(r: dict, name: str = "") -> str:
    """A small text table of a cost report (:func:`batmann.hardware.query_cost`)."""
    e, t = r["energy_pj_per_query"], r["latency_ns_per_query"]
    b = r["energy_breakdown_pj_per_query"]
    h = r["hardware"]
    lines = [f"{name} {h.get('ways')}-way {h.get('shots')}-shot, analog {h.get('analog')}, "
             f"{h.get('episodes')} episodes".strip(),
             f"{'per query':<12} {'energy (pJ)':>14} {'latency (ns)':>14}   array / ADC / DAC / digital (pJ)"]
    for part in ("controller", "keys"):
        br = b[part]
        lines.append(f"{part:<12} {e[part]:>14.4g} {t[part]:>14.4g}   {br['array']:.3g} / {br['adc']:.3g} / "
                     f"{br['dac']:.3g} / {br['digital_periphery'] + br['digital_macs']:.3g}")
    dig_t = "-" if t["digital"] is None else f"{t['digital']:.4g}"
    lines.append(f"{'total':<12} {e['total']:>14.4g} {t['total']:>14.4g}")
    lines.append(f"{'digital':<12} {e['digital']:>14.4g} {dig_t:>14}   ({r['digital_baseline']['mac']} MACs; "
                 "latency: measured here)")
    ep = r["energy_pj_per_episode"]
    lines.append(f"per episode: {ep['total']:.4g} pJ (key writes {ep['keys_write']:.4g} pJ), digital {ep['digital']:.4g} pJ")
    lines.append(f"arrays {r['arrays']['total']}, devices {r['devices']['total']}, ADCs {r['adcs']['total']} "
                 f"({r['adc_area_mm2']['total']:.3g} mm^2)")
    lines += [f"note: {n}" for n in r["notes"]]
    return "\n".join(lines)


def run_presets(args: argparse.Namespace) -> int:
    from device_models import PRESETS

    rows = [{"name": p.name, "r_on_ohm": p.r_on, "r_off_ohm": p.r_off, "memtorch_model": p.memtorch_model,
             "measured": {ni.kind: ni.describe() for ni in p.measured}, "description": p.description,
             "source": p.source} for p in PRESETS.values()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            measured = f"  measured: {', '.join(r['measured'])}" if r["measured"] else ""
            print(f"{r['name']:<16} r_on {r['r_on_ohm']:>9.0f} ohm  r_off {r['r_off_ohm']:>9.0f} ohm  "
                  f"({r['memtorch_model']}){measured}\n    {r['description']}\n    source: {r['source']}")
    return 0
