"""A Tenrec QK-video file generated in the published layout, for tests (the real file, 493M rows,
cannot be downloaded here).

The header is the published one: user_id,item_id,click,follow,like,share,video_category,
watching_times,gender,age. What the authors say of the real file holds here too:
- no timestamp: each user's rows are in time order, but users' rows are interleaved (a user's
  rows are not contiguous);
- likes, shares and follows occur on rows without a click;
- `\\N` marks a missing video_category, gender or age;
- exact duplicate lines occur.
Clicks and likes depend on a hidden user x video affinity, so a model has something to learn.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

HEADER = "user_id,item_id,click,follow,like,share,video_category,watching_times,gender,age"


def write_qk_video(folder, users: int = 40, videos: int = 150, per_user: int = 25, seed: int = 0) -> dict:
    """Write QK-video.csv into `folder`. Returns {"path", "rows" (data lines), "duplicates" (lines equal
    to an earlier line of the same user), "order" ({user: [line index, in file order]}),
    "unclicked_likes" (lines with like=1 and click=0)}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    taste, quality = rng.normal(0, 1, (users, 3)), rng.normal(0, 1, (videos, 3))
    category = rng.integers(0, 12, videos)
    gender, age = rng.integers(0, 3, users), rng.integers(0, 8, users)
    # Each user's impressions in their time order; the file interleaves users (a shuffled merge).
    queues = {u: [] for u in range(users)}
    for u in range(users):
        for v in rng.integers(0, videos, int(rng.poisson(per_user)) + 6):
            p = 1 / (1 + np.exp(-(taste[u] @ quality[v]) + 0.8))
            click = int(rng.random() < p)
            like = int(rng.random() < (0.25 if click else 0.03))  # likes without a click occur
            share = int(rng.random() < (0.08 if click else 0.01))
            follow = int(rng.random() < 0.02)
            watched = int(rng.poisson(1.5)) if click else 0
            cat = "\\N" if rng.random() < 0.05 else str(category[v])
            g = "\\N" if u % 11 == 4 else str(gender[u])
            a = "\\N" if u % 13 == 6 else str(age[u])
            queues[u].append(f"{u},{int(v)},{click},{follow},{like},{share},{cat},{watched},{g},{a}")
    lines, order = [], {u: [] for u in range(users)}
    remaining = {u: list(q) for u, q in queues.items()}
    while any(remaining.values()):
        u = int(rng.choice([u for u, q in remaining.items() if q]))
        line = remaining[u].pop(0)
        order[u].append(len(lines))
        lines.append(line)
        if rng.random() < 0.02:  # an exact duplicate line of the user's next impression
            remaining[u].insert(0, line)
    path = folder / "QK-video.csv"
    path.write_text(HEADER + "\n" + "\n".join(lines) + "\n", encoding="utf-8")
    # Lines equal to an earlier line of the same user (inserted, or the same video shown again with
    # the same labels: indistinguishable in the file either way).
    duplicates = sum(len(rows) - len({lines[i] for i in rows}) for rows in order.values())
    unclicked_likes = sum(1 for line in lines if line.split(",")[2] == "0" and line.split(",")[4] == "1")
    return {"path": str(path), "rows": len(lines), "duplicates": duplicates, "order": order,
            "unclicked_likes": unclicked_likes}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--videos", type=int, default=150)
    parser.add_argument("--per-user", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = write_qk_video(args.folder, args.users, args.videos, args.per_user, args.seed)
    print(f"wrote {out['path']}: {out['rows']} lines, {out['duplicates']} exact duplicates")


if __name__ == "__main__":
    main()
