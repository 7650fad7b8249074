"""KuaiRand data folders generated in the exact published layouts, for tests and benchmarks.

The real data (github chongminggao/KuaiRand, Zenodo record 10439422) cannot be downloaded here.
This writes the files of a version's `data/` folder with the README's file names, fields in the
README's order, and values in the README's types and ranges, with realistic label rates
(click ~35%, long view ~25%, like ~1.5%, follow and comment < 1%) that depend on a hidden
user x video affinity, so a model has something to learn:

    Pure: log_standard_4_08_to_4_21_pure.csv, log_standard_4_22_to_5_08_pure.csv,
          log_random_4_22_to_5_08_pure.csv, user_features_pure.csv,
          video_features_basic_pure.csv, video_features_statistic_pure.csv
    1K:   the same with _1k
    27K:  the standard logs and video statistics split into parts (_27k_part1.csv, ...)

is_click and long_view follow the README's definitions from play_time_ms and duration_ms.
tests/test_kuairand.py checks the files against the README's field lists, typed out there
independently of this module.
"""
from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

LOG_FIELDS = ("user_id", "video_id", "date", "hourmin", "time_ms", "is_click", "is_like", "is_follow", "is_comment",
              "is_forward", "is_hate", "long_view", "play_time_ms", "duration_ms", "profile_stay_time",
              "comment_stay_time", "is_profile_enter", "is_rand", "tab")
USER_FIELDS = ("user_id", "user_active_degree", "is_lowactive_period", "is_live_streamer", "is_video_author",
               "follow_user_num", "follow_user_num_range", "fans_user_num", "fans_user_num_range",
               "friend_user_num", "friend_user_num_range", "register_days", "register_days_range",
               *[f"onehot_feat{i}" for i in range(18)])
VIDEO_BASIC_FIELDS = ("video_id", "author_id", "video_type", "upload_dt", "upload_type", "visible_status",
                      "video_duration", "server_width", "server_height", "music_id", "music_type", "tag")
VIDEO_STATISTIC_FIELDS = (
    "video_id", "counts", "show_cnt", "show_user_num", "play_cnt", "play_user_num", "play_duration",
    "complete_play_cnt", "complete_play_user_num", "valid_play_cnt", "valid_play_user_num", "long_time_play_cnt",
    "long_time_play_user_num", "short_time_play_cnt", "short_time_play_user_num", "play_progress",
    "comment_stay_duration", "like_cnt", "like_user_num", "click_like_cnt", "double_click_cnt", "cancel_like_cnt",
    "cancel_like_user_num", "comment_cnt", "comment_user_num", "direct_comment_cnt", "reply_comment_cnt",
    "delete_comment_cnt", "delete_comment_user_num", "comment_like_cnt", "comment_like_user_num", "follow_cnt",
    "follow_user_num", "cancel_follow_cnt", "cancel_follow_user_num", "share_cnt", "share_user_num", "download_cnt",
    "download_user_num", "report_cnt", "report_user_num", "reduce_similar_cnt", "reduce_similar_user_num",
    "collect_cnt", "collect_user_num", "cancel_collect_cnt", "cancel_collect_user_num", "direct_comment_user_num",
    "reply_comment_user_num", "share_all_cnt", "share_all_user_num", "outsite_share_all_cnt")

ONEHOT_SIZES = (2, 7, 50, 1471, 15, 34, 3, 118, 454, 7, 5, 5, 2, 2, 2, 2, 2, 2)  # README ranges 0..n-1
ACTIVE_DEGREES = ("high_active", "full_active", "middle_active", "UNKNOWN")
FOLLOW_RANGES = ("0", "(0,10]", "(10,50]", "(50,100]", "(100,150]", "(150,250]", "(250,500]", "500+")
FANS_RANGES = ("0", "[1,10)", "[10,100)", "[100,1k)", "[1k,5k)", "[5k,1w)", "[1w,10w)")
FRIEND_RANGES = ("0", "[1,5)", "[5,30)", "[30,60)", "[60,120)", "[120,250)", "250+")
REGISTER_RANGES = ("15-30", "31-60", "61-90", "91-180", "181-365", "366-730", "730+")
UPLOAD_TYPES = ("ShortImport", "LongImport", "LongPicture", "ShortCamera", "Web", "PictureSet")
# Periods of the logs (Beijing time, UTC+8).
PERIODS = {"4_08_to_4_21": (dt.date(2022, 4, 8), dt.date(2022, 4, 21)),
           "4_22_to_5_08": (dt.date(2022, 4, 22), dt.date(2022, 5, 8))}
VERSIONS = {"pure": {"suffix": "pure", "standard_parts": 1, "statistic_parts": 1},
            "1k": {"suffix": "1k", "standard_parts": 1, "statistic_parts": 1},
            "27k": {"suffix": "27k", "standard_parts": 2, "statistic_parts": 3}}
_BEIJING = dt.timezone(dt.timedelta(hours=8))


def file_names(version: str) -> dict[str, list[str]]:
    """{role: [file names]} of a version's data folder, as the README lists them."""
    v = VERSIONS[version]
    s = v["suffix"]

    def parts(stem, n):
        return [f"{stem}_{s}.csv"] if n == 1 else [f"{stem}_{s}_part{i}.csv" for i in range(1, n + 1)]

    return {"standard_early": parts("log_standard_4_08_to_4_21", v["standard_parts"]),
            "standard_late": parts("log_standard_4_22_to_5_08", v["standard_parts"]),
            "random": [f"log_random_4_22_to_5_08_{s}.csv"],
            "user": [f"user_features_{s}.csv"],
            "video_basic": [f"video_features_basic_{s}.csv"],
            "video_statistic": parts("video_features_statistic", v["statistic_parts"])}


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _users(rng, n) -> pd.DataFrame:
    follow = rng.geometric(0.02, n) - 1
    fans = rng.geometric(0.01, n) - 1
    friends = rng.geometric(0.1, n) - 1
    days = rng.integers(15, 4000, n)
    frame = pd.DataFrame({
        "user_id": np.arange(n),
        "user_active_degree": rng.choice(ACTIVE_DEGREES, n, p=[0.35, 0.4, 0.2, 0.05]),
        "is_lowactive_period": (rng.random(n) < 0.05).astype(int),
        "is_live_streamer": (rng.random(n) < 0.03).astype(int),
        "is_video_author": (rng.random(n) < 0.3).astype(int),
        "follow_user_num": follow,
        "follow_user_num_range": [_range(v, [0, 10, 50, 100, 150, 250, 500], FOLLOW_RANGES, closed_right=True)
                                  for v in follow],
        "fans_user_num": fans,
        "fans_user_num_range": [_range(v, [0, 10, 100, 1000, 5000, 10000], FANS_RANGES) for v in fans],
        "friend_user_num": friends,
        "friend_user_num_range": [_range(v, [0, 5, 30, 60, 120, 250], FRIEND_RANGES) for v in friends],
        "register_days": days,
        "register_days_range": [REGISTER_RANGES[np.searchsorted([30, 60, 90, 180, 365, 730], d)] for d in days],
    })
    for i, size in enumerate(ONEHOT_SIZES):
        frame[f"onehot_feat{i}"] = rng.integers(0, size, n)
    return frame


def _range(value, edges, names, closed_right=False):
    """The README's range label of a count: '0', then the intervals between `edges`."""
    if value == 0:
        return names[0]
    side = "left" if closed_right else "right"
    return names[min(int(np.searchsorted(edges, value, side=side)), len(names) - 1)]


def _videos(rng, n) -> pd.DataFrame:
    duration = np.round(np.exp(rng.normal(10.2, 0.8, n)) / 100) * 100  # ms, median ~27 s
    upload = [(dt.date(2022, 4, 1) - dt.timedelta(days=int(d))).isoformat() for d in rng.integers(0, 900, n)]
    tags = [",".join(str(t) for t in sorted(rng.choice(70, int(rng.integers(1, 4)), replace=False)))
            for _ in range(n)]
    frame = pd.DataFrame({
        "video_id": np.arange(n), "author_id": rng.integers(0, max(2, n // 3), n),
        "video_type": rng.choice(["NORMAL", "AD"], n, p=[0.97, 0.03]), "upload_dt": upload,
        "upload_type": rng.choice(UPLOAD_TYPES, n), "visible_status": rng.choice([1, 0, 5], n, p=[0.9, 0.05, 0.05]),
        "video_duration": duration, "server_width": rng.choice([720, 1080, 576], n),
        "server_height": rng.choice([1280, 1920, 1024], n), "music_id": rng.integers(0, 10**9, n),
        "music_type": rng.choice([4, 9, 11, 8], n), "tag": tags})
    # As in the published file, some videos lack a duration or tags.
    frame["video_duration"] = frame["video_duration"].astype(object)
    frame.loc[rng.random(n) < 0.02, "video_duration"] = ""
    frame.loc[rng.random(n) < 0.02, "tag"] = ""
    return frame


def _impressions(rng, user_ids, video_ids, taste, quality, durations, period, random_policy):
    """Log rows of the given (user, video) impressions during `period`, sorted by user and time."""
    n = len(user_ids)
    first, last = PERIODS[period]
    days = (last - first).days + 1
    start = dt.datetime.combine(first, dt.time(), _BEIJING).timestamp()
    time_ms = (start * 1000 + rng.integers(0, days * 86_400_000, n)).astype(np.int64)
    order = np.lexsort((time_ms, user_ids))
    user_ids, video_ids, time_ms = user_ids[order], video_ids[order], time_ms[order]
    affinity = np.einsum("ij,ij->i", taste[user_ids], quality[video_ids])  # [n]
    duration = durations[video_ids]
    # Share of the video played: higher with affinity; random exposures are watched less.
    ratio = np.exp(rng.normal(-2.05 + 1.4 * affinity - 0.5 * random_policy, 1.2))
    play = np.round(np.minimum(ratio, 3.0) * duration).astype(np.int64)
    valid_play = np.where(duration <= 7000, play >= duration, play > 7000)
    long_view = np.where(duration <= 18000, play >= duration, play >= 18000)
    engaged = affinity + 0.8 * long_view
    like = rng.random(n) < _sigmoid(1.3 * engaged - 5.6)
    follow = rng.random(n) < _sigmoid(1.2 * engaged - 7.4)
    comment = rng.random(n) < _sigmoid(1.0 * engaged - 7.3)
    forward = rng.random(n) < _sigmoid(1.0 * engaged - 7.9)
    hate = rng.random(n) < _sigmoid(-1.0 * engaged - 8.0)
    profile = rng.random(n) < _sigmoid(engaged - 5.0)
    local = pd.to_datetime(time_ms, unit="ms", utc=True).tz_convert("Asia/Shanghai")
    return pd.DataFrame({
        "user_id": user_ids, "video_id": video_ids,
        "date": (local.year * 10000 + local.month * 100 + local.day).to_numpy(),
        "hourmin": (local.hour * 100).to_numpy(),  # as published: the hour, minutes 00
        "time_ms": time_ms, "is_click": valid_play.astype(int), "is_like": like.astype(int),
        "is_follow": follow.astype(int), "is_comment": comment.astype(int), "is_forward": forward.astype(int),
        "is_hate": hate.astype(int), "long_view": long_view.astype(int), "play_time_ms": play,
        "duration_ms": duration.astype(np.int64),
        "profile_stay_time": np.where(profile, rng.integers(1000, 60000, n), 0),
        "comment_stay_time": np.where(comment | (rng.random(n) < 0.02), rng.integers(1000, 90000, n), 0),
        "is_profile_enter": profile.astype(int), "is_rand": np.full(n, int(random_policy)),
        "tab": rng.choice([1, 0, 2, 4, 6], n, p=[0.6, 0.2, 0.1, 0.05, 0.05]) if not random_policy else np.ones(n, int),
    })


def _statistics(rng, videos: pd.DataFrame) -> pd.DataFrame:
    n = len(videos)
    frame = pd.DataFrame({"video_id": videos.video_id, "counts": rng.integers(1, 120, n)})
    show = rng.lognormal(3.5, 1.0, n)
    for name in VIDEO_STATISTIC_FIELDS[2:]:
        share = 1.0 if name.startswith("show") else rng.uniform(0.0, 0.3, n)
        value = show * share * (1000 if "duration" in name else 1)
        frame[name] = np.round(np.minimum(value, 1.0) if name == "play_progress" else value, 3)
    return frame


def write_kuairand(folder, version: str = "pure", users: int = 40, videos: int = 60, per_user: int = 30,
                   random_per_user: int = 6, seed: int = 0) -> dict:
    """Write a generated KuaiRand `data/` folder of `version` ("pure", "1k" or "27k") into `folder`.

    Args:
      folder: the data folder to write (created).
      users, videos: how many of each (ids 0..n-1, as the re-indexed published ids).
      per_user: mean standard-policy impressions per user over both periods (3/4 in the first,
        as in Pure: 80 MB against 21 MB); per-user counts vary (Poisson).
      random_per_user: mean random-policy impressions per user.
      seed: everything is drawn from it.
    Returns:
      {"files": {role: [paths]}, "rows": {file name: data rows}, "standard_rows", "random_rows"}.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = file_names(version)
    user_frame, video_frame = _users(rng, users), _videos(rng, videos)
    taste = rng.normal(0, 0.7, (users, 4))
    quality = rng.normal(0, 0.7, (videos, 4)) + np.array([0.3, 0, 0, 0])  # some videos are better for everyone
    popularity = rng.dirichlet(np.full(videos, 0.6))
    durations = pd.to_numeric(video_frame.video_duration, errors="coerce").fillna(20000).to_numpy()

    written, rows = {}, {}

    def write(role, frame):
        paths = [folder / name for name in names[role]]
        for path, part in zip(paths, np.array_split(np.arange(len(frame)), len(paths))):
            frame.iloc[part].to_csv(path, index=False)
            rows[path.name] = len(part)
        written[role] = [str(p) for p in paths]

    counts = rng.poisson(per_user, users) + 1
    early = rng.binomial(counts, 0.75)
    for role, period, n_per_user in (("standard_early", "4_08_to_4_21", early),
                                     ("standard_late", "4_22_to_5_08", counts - early)):
        user_ids = np.repeat(np.arange(users), n_per_user)
        video_ids = rng.choice(videos, len(user_ids), p=popularity)
        write(role, _impressions(rng, user_ids, video_ids, taste, quality, durations, period, False))
    random_counts = rng.poisson(random_per_user, users)
    user_ids = np.repeat(np.arange(users), random_counts)
    write("random", _impressions(rng, user_ids, rng.integers(0, videos, len(user_ids)), taste, quality, durations,
                                 "4_22_to_5_08", True))
    write("user", user_frame)
    write("video_basic", video_frame)
    write("video_statistic", _statistics(rng, video_frame))
    return {"files": written, "rows": rows, "standard_rows": int(counts.sum()), "random_rows": int(random_counts.sum())}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--version", choices=list(VERSIONS), default="pure")
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--videos", type=int, default=60)
    parser.add_argument("--per-user", type=int, default=30)
    parser.add_argument("--random-per-user", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = write_kuairand(args.folder, args.version, args.users, args.videos, args.per_user, args.random_per_user,
                         args.seed)
    print(f"wrote {args.folder}: {out['standard_rows']} standard + {out['random_rows']} random impressions")


if __name__ == "__main__":
    main()
