"""The KuaiRand generator against the published README (github chongminggao/KuaiRand), field by
field: the file names of each version and every file's fields, types and value sets are typed
out here from the README, independently of tests/kuairand_files.py."""
import re

import pandas as pd
import pytest

from kuairand_files import write_kuairand

# "Data Descriptions" of the README: the file tree of each version's data/ folder.
README_FILES = {
    "pure": ["log_random_4_22_to_5_08_pure.csv", "log_standard_4_08_to_4_21_pure.csv",
             "log_standard_4_22_to_5_08_pure.csv", "user_features_pure.csv", "video_features_basic_pure.csv",
             "video_features_statistic_pure.csv"],
    "1k": ["log_random_4_22_to_5_08_1k.csv", "log_standard_4_08_to_4_21_1k.csv", "log_standard_4_22_to_5_08_1k.csv",
           "user_features_1k.csv", "video_features_basic_1k.csv", "video_features_statistic_1k.csv"],
    "27k": ["log_random_4_22_to_5_08_27k.csv", "log_standard_4_08_to_4_21_27k_part1.csv",
            "log_standard_4_08_to_4_21_27k_part2.csv", "log_standard_4_22_to_5_08_27k_part1.csv",
            "log_standard_4_22_to_5_08_27k_part2.csv", "user_features_27k.csv", "video_features_basic_27k.csv",
            "video_features_statistic_27k_part1.csv", "video_features_statistic_27k_part2.csv",
            "video_features_statistic_27k_part3.csv"],
}
# README 1: fields of log_xxx.csv, all int64.
README_LOG = """user_id video_id date hourmin time_ms is_click is_like is_follow is_comment is_forward is_hate
long_view play_time_ms duration_ms profile_stay_time comment_stay_time is_profile_enter is_rand tab""".split()
# README 2: user_features.csv (str fields and their value sets; the rest int64).
README_USER = """user_id user_active_degree is_lowactive_period is_live_streamer is_video_author follow_user_num
follow_user_num_range fans_user_num fans_user_num_range friend_user_num friend_user_num_range register_days
register_days_range onehot_feat0 onehot_feat1 onehot_feat2 onehot_feat3 onehot_feat4 onehot_feat5 onehot_feat6
onehot_feat7 onehot_feat8 onehot_feat9 onehot_feat10 onehot_feat11 onehot_feat12 onehot_feat13 onehot_feat14
onehot_feat15 onehot_feat16 onehot_feat17""".split()
README_USER_SETS = {
    "user_active_degree": {"high_active", "full_active", "middle_active", "UNKNOWN"},
    "follow_user_num_range": {"0", "(0,10]", "(10,50]", "(100,150]", "(150,250]", "(250,500]", "(50,100]", "500+"},
    "fans_user_num_range": {"0", "[1,10)", "[10,100)", "[100,1k)", "[1k,5k)", "[5k,1w)", "[1w,10w)"},
    "friend_user_num_range": {"0", "[1,5)", "[5,30)", "[30,60)", "[60,120)", "[120,250)", "250+"},
    "register_days_range": {"15-30", "31-60", "61-90", "91-180", "181-365", "366-730", "730+"},
}
README_ONEHOT_MAX = [1, 6, 49, 1470, 14, 33, 2, 117, 453, 6, 4, 4, 1, 1, 1, 1, 1, 1]
# README 3: video_features_basic.csv.
README_VIDEO_BASIC = """video_id author_id video_type upload_dt upload_type visible_status video_duration server_width
server_height music_id music_type tag""".split()
# README 4: video_features_statistic.csv (video_id and counts int64, the rest float64).
README_VIDEO_STATISTIC = """video_id counts show_cnt show_user_num play_cnt play_user_num play_duration
complete_play_cnt complete_play_user_num valid_play_cnt valid_play_user_num long_time_play_cnt long_time_play_user_num
short_time_play_cnt short_time_play_user_num play_progress comment_stay_duration like_cnt like_user_num click_like_cnt
double_click_cnt cancel_like_cnt cancel_like_user_num comment_cnt comment_user_num direct_comment_cnt
reply_comment_cnt delete_comment_cnt delete_comment_user_num comment_like_cnt comment_like_user_num follow_cnt
follow_user_num cancel_follow_cnt cancel_follow_user_num share_cnt share_user_num download_cnt download_user_num
report_cnt report_user_num reduce_similar_cnt reduce_similar_user_num collect_cnt collect_user_num
cancel_collect_cnt cancel_collect_user_num direct_comment_user_num reply_comment_user_num share_all_cnt
share_all_user_num outsite_share_all_cnt""".split()


def _header(path):
    with open(path, encoding="utf-8") as handle:
        return handle.readline().rstrip("\n").split(",")


@pytest.mark.parametrize("version", ["pure", "1k", "27k"])
def test_generated_folder_has_the_readme_files_and_fields(tmp_path, version):
    out = write_kuairand(tmp_path, version, users=12, videos=20, per_user=10, random_per_user=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(README_FILES[version])
    for name in README_FILES[version]:
        expected = (README_LOG if name.startswith("log_") else README_USER if name.startswith("user_")
                    else README_VIDEO_BASIC if "basic" in name else README_VIDEO_STATISTIC)
        assert _header(tmp_path / name) == expected, name
    logs = pd.concat([pd.read_csv(tmp_path / n) for n in README_FILES[version] if n.startswith("log_")])
    assert len(logs) == out["standard_rows"] + out["random_rows"]


def test_generated_values_follow_the_readme(tmp_path):
    write_kuairand(tmp_path, "pure", users=300, videos=200, per_user=40, random_per_user=10)
    standard = pd.concat([pd.read_csv(tmp_path / n) for n in README_FILES["pure"] if n.startswith("log_standard")])
    random_log = pd.read_csv(tmp_path / "log_random_4_22_to_5_08_pure.csv")
    for log in (standard, random_log):
        assert all(pd.api.types.is_integer_dtype(log[c]) for c in README_LOG)  # every field int64
        stamp = pd.to_datetime(log.time_ms, unit="ms", utc=True).dt.tz_convert("Asia/Shanghai")
        assert (log.date == stamp.dt.year * 10000 + stamp.dt.month * 100 + stamp.dt.day).all()
        assert (log.hourmin // 100 == stamp.dt.hour).all()
        # The README's definitions of is_click (valid play) and long_view.
        d, p = log.duration_ms, log.play_time_ms
        assert (log.is_click == ((d <= 7000) & (p >= d) | (d > 7000) & (p > 7000))).all()
        assert (log.long_view == ((d <= 18000) & (p >= d) | (d > 18000) & (p >= 18000))).all()
        assert log.tab.between(0, 14).all()
    assert (standard.is_rand == 0).all() and (random_log.is_rand == 1).all()
    assert standard.date.between(20220408, 20220508).all() and random_log.date.between(20220422, 20220508).all()
    # Realistic rates (issue 17): click 30-40%, like 1-2%, follow and comment below 1%.
    assert 0.30 <= standard.is_click.mean() <= 0.42 and 0.008 <= standard.is_like.mean() <= 0.025
    assert standard.is_follow.mean() < 0.01 and standard.is_comment.mean() < 0.01

    users = pd.read_csv(tmp_path / "user_features_pure.csv", dtype={c: str for c in README_USER_SETS})
    for column, values in README_USER_SETS.items():
        assert set(users[column]) <= values, column
    for i, top in enumerate(README_ONEHOT_MAX):
        assert users[f"onehot_feat{i}"].between(0, top).all()
    videos = pd.read_csv(tmp_path / "video_features_basic_pure.csv", dtype={"tag": str, "upload_dt": str})
    assert set(videos.video_type) <= {"NORMAL", "AD"}
    assert videos.upload_dt.str.fullmatch(r"\d{4}-\d{2}-\d{2}").all()
    assert videos.tag.dropna().map(lambda t: bool(re.fullmatch(r"\d+(,\d+)*", t))).all()
    assert set(standard.video_id) | set(random_log.video_id) <= set(videos.video_id)
    assert set(standard.user_id) <= set(users.user_id)
