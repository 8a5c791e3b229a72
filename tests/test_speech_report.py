"""speech.md's ablation table and levers: each row is read against the recipe it was measured with, so a row
run before the recipe changed is labelled as such and compared with the row of its own base recipe."""
from __future__ import annotations

import dataclasses

from training.speech import SpeechRecipe
from training.speech_cv import ablation_base, speech_markdown


def _row(name: str, acc: float, recipe: SpeechRecipe) -> dict:
    return {"name": name, "change": name, "folds": [0, 2], "recipe": dataclasses.asdict(recipe),
            "mean_clip_accuracy": acc, "minutes": 1.0}


def _headline(recipe: SpeechRecipe) -> dict:
    fold = {"test_actors": [1], "val_actors": [2], "clip_accuracy": 0.6, "patch_accuracy": 0.5, "n_test_clips": 60,
            "best_epochs": [9]}
    cm = [[5 if i == j else (3 if (i, j) == (1, 3) else 0) for j in range(8)] for i in range(8)]
    return {"mean_clip_accuracy": 0.6, "std_clip_accuracy": 0.01, "mean_patch_accuracy": 0.5, "params": 1000,
            "cv_minutes": 1.0, "machine": {"cpu_count": 2}, "folds": [fold],
            "patches_per_clip": {"mean": 4.0, "min": 2, "max": 9, "hop_seconds": 0.48},
            "vad": {"mean_seconds_in": 3.7, "mean_seconds_trimmed": 2.2, "mean_trimmed_fraction": 0.4},
            "skipped": [], "confusion": cm, "emotions": [f"e{i}" for i in range(8)],
            "recipe": dataclasses.asdict(recipe), "folds_map": {}}


def test_a_lever_repeated_on_another_seed_pairs_with_that_seeds_row():
    now = SpeechRecipe()                                   # weight averaging on
    rows = [_row("recipe", 0.69, now), _row("seed-1", 0.70, now.replace(seeds=(1,))),
            _row("no-weight-ema", 0.68, now.replace(weight_ema=0.0)),
            _row("no-weight-ema-seed-1", 0.67, now.replace(weight_ema=0.0, seeds=(1,)))]
    for r in rows:
        r["fold_clip_accuracy"] = [r["mean_clip_accuracy"]] * 2
    cur = dataclasses.asdict(now)
    assert ablation_base(rows[2], rows, cur) == ({}, rows[0])
    assert ablation_base(rows[3], rows, cur) == ({"seeds": [1]}, rows[1])      # seed 1's row, not the recipe
    md = speech_markdown(_headline(now), rows, "edge-train speech")
    assert "| no-weight-ema-seed-1 | no-weight-ema-seed-1 | recipe with seeds=[1] |" in md
    assert "+1.0 from the moving average of the weights (Polyak)" in md
    assert "+3.0 from the moving average of the weights with seed 1 (against the seed-1 row)" in md


def test_rows_of_an_earlier_recipe_are_labelled_and_compared_with_their_own_base():
    now = SpeechRecipe()                                   # label smoothing 0.1
    before = now.replace(label_smoothing=0.0)
    rows = [_row("naive", 0.50, before.replace(logmel_norm="none", feature_norm="global", time_masks=0, freq_masks=0,
                                               mixup_alpha=0.0, noise_std=0.0)),
            _row("recipe", 0.61, now),
            _row("no-label-smoothing", 0.58, before),
            _row("no-augment", 0.55, now.replace(time_masks=0, freq_masks=0, mixup_alpha=0.0, noise_std=0.0))]
    cur = dataclasses.asdict(now)
    assert ablation_base(rows[0], rows, cur)[0] == {"label_smoothing": 0.0}
    assert ablation_base(rows[0], rows, cur)[1]["name"] == "no-label-smoothing"
    assert ablation_base(rows[3], rows, cur) == ({}, rows[1])
    assert ablation_base(rows[2], rows, cur) == ({}, rows[1])
    md = speech_markdown(_headline(now), rows, "edge-train speech")
    assert "| naive | naive | recipe with label_smoothing=0.0 |" in md
    assert "| no-augment | no-augment | recipe |" in md
    # naive against its own base (0.58), not the current recipe (0.61); label smoothing against the recipe
    assert "+8.0 over the naive patch model" in md and "+6.0 from augmentation" in md
    assert "+3.0 from label smoothing 0.1" in md


def test_a_row_stored_before_a_field_existed_ran_with_that_lever_off():
    """A field added later (speed perturbation) is absent from older rows: they ran without it, whatever the
    field's default is now."""
    from training.speech_cv import FIELDS_ADDED_OFF, recipe_as_run
    old = dataclasses.asdict(SpeechRecipe())
    for k in FIELDS_ADDED_OFF:
        old.pop(k)
    run = recipe_as_run(old)
    assert run["speed_perturb"] == [] and run["freq_warp"] == 0.0 and run["refit"] is False and run["seeds"] == [0]
    assert recipe_as_run({**old, "speed_perturb": [0.9, 1.1]})["speed_perturb"] == [0.9, 1.1]
    assert set(FIELDS_ADDED_OFF) <= {f.name for f in dataclasses.fields(SpeechRecipe)}


def test_a_headline_run_older_than_the_recipe_is_flagged():
    old = SpeechRecipe().replace(speed_perturb=(), test_speeds=())
    md = speech_markdown(_headline(old), [], "edge-train speech")
    assert "predates the current recipe" in md and "speed_perturb=[0.9, 1.1]" in md
    assert "predates" not in speech_markdown(_headline(SpeechRecipe()), [], "edge-train speech")


def test_a_test_time_augmentation_row_shows_its_paired_figure():
    now = SpeechRecipe()                                   # test clips also voted at 0.9x and 1.1x
    tta = _row("recipe", 0.66, now)
    tta["mean_clip_accuracy_without_test_speeds"] = 0.64
    md = speech_markdown(_headline(now), [tta, _row("no-test-speeds", 0.64, now.replace(test_speeds=()))], "")
    row = next(ln for ln in md.splitlines() if ln.startswith("| recipe"))
    assert "66.00% (64.00% from the same models without the test copies)" in row
    row = next(ln for ln in md.splitlines() if ln.startswith("| no-test-speeds"))
    assert "| recipe |" in row and "64.00% |" in row                    # measured against the current recipe


def test_a_headline_with_test_copies_shows_the_same_models_without_them():
    r = _headline(SpeechRecipe(test_speeds=(0.9, 1.1)))
    r["folds"][0]["clip_accuracy_without_test_speeds"] = 0.55
    r["mean_clip_accuracy_without_test_speeds"] = 0.55
    md = speech_markdown(r, [], "")
    assert "0.9x, 1.1x" in md and "score **55.00%**" in md
    header = next(ln for ln in md.splitlines() if ln.startswith("| test actors"))
    row = next(ln for ln in md.splitlines() if ln.startswith("| [1]"))
    assert "without test copies" in header and "| 60.00% | 55.00% | 50.00% |" in row
    assert header.count("|") == row.count("|")
    plain = speech_markdown(_headline(SpeechRecipe()), [], "")
    assert "without test copies" not in plain


def test_a_rerun_of_the_recipe_with_another_random_stream_is_reported_as_noise():
    from training.speech_cv import NOISE_ROW
    now = SpeechRecipe()
    base, again = _row("test-speeds-2", 0.68, now), _row(NOISE_ROW, 0.66, now)
    base.update(fold_clip_accuracy=[0.76, 0.60], mean_clip_accuracy_without_test_speeds=0.64)
    again.update(fold_clip_accuracy=[0.71, 0.61], mean_clip_accuracy_without_test_speeds=0.65)
    two = now.replace(test_speeds=(0.9, 1.1))
    base["recipe"] = again["recipe"] = dataclasses.asdict(two)
    md = speech_markdown(_headline(now), [_row("recipe", 0.69, now), base, again], "")
    line = next(ln for ln in md.splitlines() if "Run-to-run noise" in ln)
    assert "-5.0, +1.0 points" in line and "68.00% -> 66.00%" in line and "+4.0 and +1.0" in line
    assert "Row `test-speeds-2` re-run" in line
    assert "Run-to-run" not in speech_markdown(_headline(now), [base], "")
    levers = next(ln for ln in md.splitlines() if "**Levers**" in ln)
    assert "from the four test-only speeds" in levers and NOISE_ROW not in levers   # not a lever


def _paired(recipe: SpeechRecipe, name: str, row_name: str, headline: float, row: tuple[float, float],
            **fold) -> tuple[str, str]:
    """speech.md of a headline and one ablation row that carry the paired figure ``name``: (markdown, the row)."""
    r = _headline(recipe)
    r["folds"][0].update({f"clip_accuracy_{name}": headline, **fold})
    r[f"mean_clip_accuracy_{name}"] = headline
    a = _row(row_name, row[0], recipe)
    a[f"mean_clip_accuracy_{name}"] = row[1]
    md = speech_markdown(r, [a], "")
    return md, next(ln for ln in md.splitlines() if ln.startswith(f"| {row_name}"))


def test_a_snapshot_ensemble_shows_the_best_epoch_alone():
    md, line = _paired(SpeechRecipe(snapshots=3, refit=False), "best_epoch", "snapshots-3", 0.58, (0.61, 0.59),
                       snapshot_epochs=[[12, 9, 15]])
    assert "3 best validation epochs" in md and "[12, 9, 15]" in md and "scores **58.00%** (folds 58.0)" in md
    assert "61.00% (59.00% from each run's best epoch alone)" in line
    assert "best epoch's model alone" not in speech_markdown(_headline(SpeechRecipe()), [], "")


def test_speaker_batchnorm_shows_the_trained_statistics_alongside():
    md, line = _paired(SpeechRecipe(speaker_bn=True), "without_speaker_bn", "speaker-bn", 0.57, (0.62, 0.6))
    assert "AdaBN" in md and "score **57.00%** (folds 57.0)" in md
    assert "62.00% (60.00% from the same models with their trained BatchNorm statistics)" in line


def test_self_training_shows_the_same_models_before_it():
    md, line = _paired(SpeechRecipe(self_train=0.5), "without_self_train", "self-train-0.5", 0.66, (0.64, 0.65))
    assert "50% of each voted class" in md and "8 more epochs" in md and "score **66.00%** (folds 66.0)" in md
    assert "64.00% (65.00% from the same models before self-training)" in line
    assert "Self-training" not in speech_markdown(_headline(SpeechRecipe()), [], "")


def test_rows_on_all_four_folds_get_their_own_levers_line():
    now = SpeechRecipe()
    two = [_row("recipe", 0.69, now), _row("val-actors-2", 0.66, now.replace(val_actors=2))]
    four = [dict(_row("recipe", 0.686, now), folds=[0, 1, 2, 3], cv_minutes=20.8),
            dict(_row("val-actors-2", 0.70, now.replace(val_actors=2)), folds=[0, 1, 2, 3], cv_minutes=22.0)]
    md = speech_markdown(_headline(now), two + four, "")
    levers = [ln for ln in md.splitlines() if ln.startswith("- **Levers**")]
    assert len(levers) == 2
    assert "ablation folds" in levers[0] and "+3.0 vs. 2 validation actors" in levers[0]
    assert "folds [0, 1, 2, 3]" in levers[1] and "-1.4 vs. 2 validation actors" in levers[1]
    table = [ln for ln in md.splitlines() if ln.startswith("| val-actors-2")]
    assert len(table) == 2 and table[1].endswith("| 22.0 |")          # a 4-fold row shows its folds' own time


def test_a_second_seed_is_reported_as_noise_not_as_a_lever():
    from training.speech_cv import SEED_ROW
    now = SpeechRecipe()
    four = dict(folds=[0, 1, 2, 3])
    base = dict(_row("recipe", 0.6861, now), fold_clip_accuracy=[0.75, 0.69, 0.63, 0.68], **four)
    seeded = dict(_row(SEED_ROW, 0.6761, now.replace(seeds=(1,))), fold_clip_accuracy=[0.73, 0.70, 0.60, 0.67],
                  **four)
    md = speech_markdown(_headline(now), [base, seeded], "")
    line = next(ln for ln in md.splitlines() if ln.startswith("- **Seed.**"))
    assert "67.61% against 68.61%" in line and "-2.0, +1.0, -3.0, -1.0" in line
    assert "seed" not in next(ln for ln in md.splitlines() if ln.startswith("- **Levers**"))


def test_four_fold_rows_plot_patch_against_clip_accuracy(tmp_path):
    from training.speech_cv import write_reports
    now = SpeechRecipe()
    rows = [dict(_row(n, c, now.replace(**kw)), folds=[0, 1, 2, 3], mean_patch_accuracy=pa)
            for n, c, pa, kw in (("recipe", 0.686, 0.559, {}), ("patch-1.44s", 0.681, 0.606, {"patch_frames": 144}),
                                 ("lstm-128", 0.675, 0.545, {"lstm_units": 128}))]
    rows.append(_row("naive", 0.53, now.replace(logmel_norm="none")))            # 2 folds, no patch accuracy
    rows.append(dict(_row("ensemble-3", 0.70, now.replace(seeds=(0, 1, 2))), folds=[0, 1, 2, 3],
                     mean_patch_accuracy=0.62))                                 # 3 runs a fold: not a lever point
    md = speech_markdown(_headline(now), rows, "")
    line = next(ln for ln in md.splitlines() if ln.startswith("- **Better patches"))
    assert "3 single-run rows" in line and "54.5–60.6%" in line and "67.5–68.6%" in line and "(`patch-1.44s`) scores 68.10%" in line
    assert "| 60.60% |" in next(ln for ln in md.splitlines() if ln.startswith("| patch-1.44s"))
    assert "| not recorded |" in next(ln for ln in md.splitlines() if ln.startswith("| naive"))
    write_reports(_headline(now), tmp_path, rows)
    assert (tmp_path / "speech_levers.png").stat().st_size > 10_000
    assert "Better patches" not in speech_markdown(_headline(now), rows[:2], "")   # two points say nothing


def test_an_ensemble_row_shows_what_each_added_seed_bought_and_the_soft_vote():
    now = SpeechRecipe()
    four = dict(folds=[0, 1, 2, 3], mean_patch_accuracy=0.57, cv_minutes=61.0)
    row = dict(_row("ensemble-3", 0.70, now.replace(seeds=(0, 1, 2))), **four,
               mean_clip_accuracy_soft_vote=0.705, mean_clip_accuracy_first_seeds=[0.686, 0.694, 0.70],
               mean_clip_accuracy_first_seeds_soft_vote=[0.69, 0.70, 0.705],
               mean_clip_accuracy_each_seed=[0.686, 0.675, 0.68])
    md = speech_markdown(_headline(now), [dict(_row("recipe", 0.686, now), **four), row], "")
    line = next(ln for ln in md.splitlines() if ln.startswith("| ensemble-3"))
    assert "70.00% (70.50% voting each clip by its summed probabilities" in line
    assert "(the first k seeds: 68.60%, 69.40%, 70.00%)" in line
    seeds = next(ln for ln in md.splitlines() if ln.startswith("- **Seeds.**"))
    assert "k = 1: 68.60%, 2: 69.40%, 3: 70.00%" in seeds and "(mean 68.03%)" in seeds
    assert "k = 1: 69.00%, 2: 70.00%, 3: 70.50%" in seeds and "the 3 took 61 min" in seeds
    assert "-1.4 vs. a 3-seed ensemble" in next(ln for ln in md.splitlines() if ln.startswith("- **Levers**"))
    assert "**Seeds.**" not in speech_markdown(_headline(now), [dict(_row("recipe", 0.686, now), **four)], "")


def test_of_two_ensembles_with_as_many_seeds_the_current_recipes_leads():
    from training.speech_cv import largest_ensemble
    now = SpeechRecipe()
    four = dict(folds=[0, 1, 2, 3], mean_patch_accuracy=0.57, cv_minutes=61.0)
    old = dict(_row("no-refit-ensemble-2", 0.70, now.replace(seeds=(0, 1), refit=False, epochs=30, patience=10)),
               **four, mean_clip_accuracy_first_seeds=[0.686, 0.70])                      # an earlier recipe's
    new = dict(_row("ensemble-2", 0.72, now.replace(seeds=(0, 1))), **four, mean_clip_accuracy_first_seeds=[0.71, 0.72])
    for rows in ([old, new], [new, old]):
        assert largest_ensemble(rows)["name"] == "ensemble-2"
    assert largest_ensemble([old])["name"] == "no-refit-ensemble-2"
    md = speech_markdown(_headline(now), [dict(_row("recipe", 0.69, now), **four), old, new], "")
    seeds = next(ln for ln in md.splitlines() if ln.startswith("- **Seeds.**"))
    assert "(`ensemble-2`, all four folds)" in seeds and "k = 1: 71.00%, 2: 72.00%" in seeds
    assert "-3.0 vs. a 2-seed ensemble (2x the training time)" in md
    assert "-1.0 vs. a 2-seed ensemble without refitting (the recipe before it)" in md


def test_a_lever_measured_before_it_joined_the_recipe_keeps_its_old_base():
    """The 2-fold refit row ran when the recipe did not refit: its base is that recipe (LEVER_BASE), not the
    current one, which the row itself now equals in the lever's fields."""
    now = SpeechRecipe()                                   # refit after a 20-epoch selection run
    before = now.replace(refit=False, epochs=30, patience=10, weight_ema=0.0)
    rows = [_row("recipe", 0.69, before), _row("refit", 0.70, before.replace(refit=True)),
            _row("no-test-speeds", 0.65, now.replace(test_speeds=()))]
    cur = dataclasses.asdict(now)
    differs, base = ablation_base(rows[1], rows, cur)
    assert base is rows[0] and differs == {"refit": False, "epochs": 30, "patience": 10, "weight_ema": 0.0}
    md = speech_markdown(_headline(now), rows, "edge-train speech")
    assert "| refit | refit | recipe with epochs=30, patience=10, refit=False, weight_ema=0.0 |" in md
    assert "-1.0 vs. refitting on the validation actors" in md
    assert ablation_base(rows[2], rows, cur) == ({}, None)              # its base (the recipe now) was not run


def test_an_ensemble_inside_the_time_budget_is_named_beside_the_largest_one():
    now = SpeechRecipe()
    four = dict(folds=[0, 1, 2, 3], mean_patch_accuracy=0.57)
    big = dict(_row("ensemble-3", 0.70, now.replace(seeds=(0, 1, 2))), **four, cv_minutes=61.0,
               mean_clip_accuracy_first_seeds=[0.686, 0.694, 0.70])
    small = dict(_row("ensemble-2-20ep", 0.69, now.replace(seeds=(0, 1), epochs=20, patience=5)), **four,
                 change="recipe, 2 seeds, capped: sized", cv_minutes=25.8, mean_clip_accuracy_soft_vote=0.695,
                 mean_clip_accuracy_first_seeds=[0.68, 0.69], mean_clip_accuracy_each_seed=[0.68, 0.666])
    recipe = dict(_row("recipe", 0.686, now), **four, cv_minutes=20.0)
    seeds = next(ln for ln in speech_markdown(_headline(now), [recipe, big, small], "").splitlines()
                 if ln.startswith("- **Seeds.**"))
    assert "(`ensemble-3`, all four folds)" in seeds        # the curve stays the largest ensemble's
    assert ("Sized for the 30-minute budget (`ensemble-2-20ep`: recipe, 2 seeds, capped, 25.8 min): 69.00% "
            "(69.50% by summed probabilities), its first seed alone 68.00%.") in seeds
    over = dict(small, cv_minutes=31.0)                      # over the budget: not named as inside it
    seeds = next(ln for ln in speech_markdown(_headline(now), [recipe, big, over], "").splitlines()
                 if ln.startswith("- **Seeds.**"))
    assert "Sized for" not in seeds


def test_the_actors_finding_names_the_spread_and_the_two_sexes():
    from training.speech_cv import limits
    r = _headline(SpeechRecipe())
    assert not any("**Actors.**" in ln for ln in limits(r, []))         # a headline from before the field: nothing
    r["actor_clip_accuracy"] = {"1": 0.5, "2": 0.9, "3": 0.6, "4": 0.75}    # odd actors male, even female
    (line,) = [ln for ln in limits(r, []) if "**Actors.**" in ln]
    assert "score 50.0–90.0%" in line and "hardest 1 (50.0%), 3 (60.0%), 4 (75.0%)" in line
    assert "easiest 2 (90.0%), 4 (75.0%), 3 (60.0%)" in line and "2 of 4 actors reach the paper's 72.22%" in line
    assert "Male actors 55.0%, female 82.5%" in line and "ablation rows that record it" not in line
    four = dict(folds=[0, 1, 2, 3], mean_patch_accuracy=0.57, cv_minutes=20.0)
    row = dict(_row("pitch-norm-0.5", 0.69, SpeechRecipe(pitch_norm=0.5)), **four, mean_clip_accuracy_male=0.62,
               mean_clip_accuracy_female=0.754)
    (line,) = [ln for ln in limits(r, [dict(_row("recipe", 0.686, SpeechRecipe()), **four), row]) if "Actors" in ln]
    assert "the ablation rows that record it: `pitch-norm-0.5` male 62.0%, female 75.4%." in line
    r["speaker_dependent"] = {"mean_clip_accuracy": 0.8, "fold_clip_accuracy": [0.8], "protocol": "sd",
                              "mean_clip_accuracy_male": 0.75, "mean_clip_accuracy_female": 0.85}
    (line,) = [ln for ln in limits(r, []) if "**Actors.**" in ln]
    assert "the gap is 10.0 of these 27.5 points (male 75.0%, female 85.0%): most of it comes with " \
           "generalising to new speakers." in line


def test_every_ablation_lever_has_its_words_in_the_levers_finding():
    """A row without an entry in LEVER_TEXT would silently drop out of the Levers finding."""
    from training.speech_cv import ABLATION, LEVER_TEXT, SEED_ROW
    assert set(LEVER_TEXT) == {n for n, _, _ in ABLATION} - {"recipe", SEED_ROW}


def test_the_speaker_prior_is_reported_as_transductive_with_its_cost_under_skew():
    r = _headline(SpeechRecipe())
    assert "Speaker prior" not in speech_markdown(r, [], "")
    r["folds"][0].update(clip_accuracy_actor_centred=0.73, clip_accuracy_actor_centred_scores=0.74)
    r.update(mean_clip_accuracy_actor_centred=0.73, mean_clip_accuracy_actor_centred_scores=0.74,
             actor_centring_skew={"5": {"clips_per_actor": 36.2, "vote": 0.69, "centred_vote": 0.72,
                                        "centred_scores": 0.73},
                                  "0.3": {"clips_per_actor": 16.0, "vote": 0.68, "centred_vote": 0.62,
                                          "centred_scores": 0.61}})
    md = speech_markdown(r, [], "")
    assert "transductive" in md and "**73.00%** (folds 73.0) with the paper's majority vote" in md
    assert "**74.00%** (folds 74.0) by the centred clip scores" in md
    assert "| 0.3 | 16 | 68.00% | 62.00% | 61.00% |" in md and "| 5 | 36 | 69.00% | 72.00% | 73.00% |" in md


def test_one_sided_speakers_are_a_finding_when_speaker_skew_was_run():
    r = _headline(SpeechRecipe())
    assert "Balanced speakers" not in speech_markdown(r, [], "")
    skew = {"alphas": {"5": {"clips_per_actor": 35.0, "all_clip_stats": 0.70, "kept_clip_stats": 0.69},
                       "0.3": {"clips_per_actor": 15.2, "all_clip_stats": 0.69, "kept_clip_stats": 0.60}}}
    md = speech_markdown(r, [], "", skew)
    assert "**Balanced speakers.**" in md and "Dirichlet(0.3), 15 clips per actor" in md
    assert "score 60.0% against 69.0% with all-clip statistics" in md and "(speaker_skew.md)" in md


def test_a_row_timed_on_another_cpu_says_so_in_its_minutes():
    now = SpeechRecipe()
    slow = {**_row("no-test-speeds", 0.64, now.replace(test_speeds=())),
            "machine": {"cpu_count": 2, "cpu": "AMD EPYC", "cpu_features": "family 25 model 1, AVX2"}}
    same = {**_row("recipe", 0.66, now), "machine": {"cpu_count": 2, "cpu": "AMD EPYC",
                                                     "cpu_features": "family 26 model 2, AVX-512"}}
    head = {**_headline(now), "machine": same["machine"]}
    md = speech_markdown(head, [same, slow], "")
    row = next(ln for ln in md.splitlines() if ln.startswith("| no-test-speeds"))
    assert row.endswith("| 1.0 (AMD EPYC family 25 model 1, AVX2, not the recipe run's CPU) |")
    row = next(ln for ln in md.splitlines() if ln.startswith("| recipe"))
    assert row.endswith("| 1.0 |")


def test_cpu_features_name_the_family_and_vector_width():
    from edge.machine import cpu_features
    f = cpu_features()
    assert f == "" or (f.startswith("family ") and f.split(", ")[-1] in ("AVX-512", "AVX2", "AVX", "no AVX"))
