"""``batmann data fetch | info | episode``: obtain Omniglot, show its counts, draw an episode."""

from __future__ import annotations

import argparse
import json
import sys
import time

from batmann.cli.train_cmd import add_protocol_options
from batmann.errors import DataError


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _positive_size(text: str) -> int:
    from batmann.data.images import check_size

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    try:
        return check_size(value)
    except ValueError as exc:  # ConfigError
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub: argparse._SubParsersAction) -> None:
    from batmann.cli import OneLineParser
    from batmann.data.splits import SPLITS

    p = sub.add_parser("data", help="fetch Omniglot, show its counts, draw an episode",
                       description="Omniglot data: fetch and preprocess it once, show its counts, "
                                   "draw an episode. Data lives under $BATMANN_HOME (default ~/.cache/batmann).")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", parser_class=OneLineParser)
    dsub.required = True

    home_help = "data folder (default $BATMANN_HOME or ~/.cache/batmann)"
    f = dsub.add_parser("fetch", help="extract (or download) Omniglot and build the image cache",
                        description="Obtain images_background.zip and images_evaluation.zip from --source, "
                                    "$BATMANN_OMNIGLOT_SOURCE, or the official URLs (MD5-checked), extract them "
                                    "safely and build the resized image cache. A no-op when done already.")
    f.add_argument("--source", default=None, metavar="DIR",
                   help="folder holding the two archives (default $BATMANN_OMNIGLOT_SOURCE, else download)")
    f.add_argument("--home", default=None, metavar="DIR", help=home_help)
    f.add_argument("--size", type=_positive_size, default=32, help="cache image side in pixels (default 32)")
    f.set_defaults(func=run_fetch)

    i = dsub.add_parser("info", help="print the alphabet, character and image counts",
                        description="Print the counts of the background and evaluation sets (from the cache).")
    i.add_argument("--json", action="store_true",
                   help="print JSON: {background|evaluation: {alphabets, characters, images}}")
    i.add_argument("--size", type=_positive_size, default=32, help="cache image side in pixels (default 32)")
    i.add_argument("--home", default=None, metavar="DIR", help=home_help)
    i.set_defaults(func=run_info)

    e = dsub.add_parser("episode", help="draw one episode (supports and queries) as a PNG",
                        description="Sample one episode and draw it: one row per class, its supports, then its "
                                    "queries, with the episode's rotation. The same arguments give the same file.")
    e.add_argument("--ways", type=int, default=5, help="classes (default 5)")
    e.add_argument("--shots", type=int, default=5, help="supports per class (default 5)")
    e.add_argument("--queries", type=int, default=5, help="queries per class (default 5)")
    e.add_argument("--query-pool", type=int, default=None,
                   help="images per class reserved for queries (default 20 - shots)")
    e.add_argument("--split", choices=SPLITS, default="seed", help="character split (default seed)")
    e.add_argument("--subset", choices=("train", "test"), default="test", help="split half (default test)")
    add_protocol_options(e, default=False)
    e.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    e.add_argument("--index", type=int, default=0, help="episode number within the seed's sequence (default 0)")
    e.add_argument("--out", default="episode.png", metavar="FILE.png", help="output PNG (default episode.png)")
    e.add_argument("--size", type=_positive_size, default=32, help="cache image side in pixels (default 32)")
    e.add_argument("--home", default=None, metavar="DIR", help=home_help)
    e.set_defaults(func=run_episode)


def run_fetch(args: argparse.Namespace) -> int:
    from batmann.data.cache import _load, build_image_cache, cache_dir
    from batmann.data.omniglot import fetch_omniglot

    report = fetch_omniglot(args.home, args.source, log=_say)
    for which, item in report.items():
        verb = "already present" if item["status"] == "present" else "extracted"
        print(f"{which}: {verb}: {item['counts']} in {item['path']}")
    folder = cache_dir(args.size, args.home)
    if _load(folder, args.size, args.home, mmap=True)[0] is not None:
        print(f"cache {args.size}x{args.size}: already built in {folder}")
    else:
        start = time.perf_counter()
        build_image_cache(args.size, args.home, log=_say)
        print(f"cache {args.size}x{args.size}: built in {time.perf_counter() - start:.1f} s in {folder}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from batmann.data.cache import load_image_cache

    start = time.perf_counter()
    cache = load_image_cache(args.size, home=args.home, fetch=False, mmap=True, log=_say)
    seconds = time.perf_counter() - start
    counts = cache.counts()
    if args.json:
        print(json.dumps({w: c.as_dict() for w, c in counts.items()}, indent=2))
        return 0
    print(f"Omniglot cache {cache.size}x{cache.size}: {cache.path} (loaded in {seconds * 1000:.0f} ms)")
    print(f"{'set':<12}{'alphabets':>10}{'characters':>12}{'images':>9}")
    for which, c in counts.items():
        print(f"{which:<12}{c.alphabets:>10}{c.characters:>12}{c.images:>9}")
    print(f"{'total':<12}{sum(c.alphabets for c in counts.values()):>10}"
          f"{sum(c.characters for c in counts.values()):>12}{sum(c.images for c in counts.values()):>9}")
    return 0


def run_episode(args: argparse.Namespace) -> int:
    from batmann.data import EpisodeConfig, EpisodeSampler, load_image_cache, split_characters
    from batmann.data.episodes import IMAGES_PER_CHARACTER
    from batmann.data.picture import save_episode_png
    from batmann.errors import ConfigError

    if args.index < 0:
        raise ConfigError(f"--index must be >= 0 (got {args.index})")
    pool = args.query_pool if args.query_pool is not None else IMAGES_PER_CHARACTER - args.shots
    config = EpisodeConfig(ways=args.ways, shots=args.shots, queries=args.queries, query_pool=pool,
                           within_alphabet=args.within_alphabet, distinct_drawers=args.distinct_drawers)
    config.validate(10**9)  # the option rules first, before loading anything
    cache = load_image_cache(args.size, home=args.home, log=_say)
    train, test = split_characters(cache, args.split)
    sampler = EpisodeSampler(cache, train if args.subset == "train" else test, config, seed=args.seed)
    episode = sampler.sample(index=args.index)
    try:
        save_episode_png(cache, episode, args.out)
    except OSError as exc:
        raise DataError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    print(f"wrote {args.out}: {args.ways}-way {args.shots}-shot, {args.queries} queries per class, "
          f"{args.subset} characters of the {args.split} split, seed {args.seed}, rotation {episode.rotation}")
    return 0
