"""benchmarks/check_numbers.py: every quoted benchmark table agrees with the committed CSV it names, and a number typed
differently from its source is caught (flat tables, renamed keys, pivots, paragraphs)."""

from conftest import load_script

SOURCE = """\
attack,defense,setting,ca_after,ra_asr_mean,ra_asr_std
badnet,bibau,60:0.1:1e-4,0.9474999904632568,0.021,0.02
badnet,bibau,120:0.1:1e-4,0.95,0.025,0.02
badnet,none,60:0.1:1e-4,0.9625,0.999,0.0016
badnet,none,120:0.1:1e-4,0.9625,0.998,0.0016
blended,bibau,60:0.1:1e-4,0.938,0.357,0.073
blended,bibau,120:0.1:1e-4,0.94,0.464,0.137
blended,none,60:0.1:1e-4,0.9425,0.961,0.033
blended,none,120:0.1:1e-4,0.9425,0.960,0.030
"""


def check(tmp_path, document: str):
    checker = load_script("benchmarks/check_numbers.py")
    (tmp_path / "source.csv").write_text(SOURCE)
    path = tmp_path / "doc.md"
    path.write_text(document.replace("SOURCE", str(tmp_path / "source.csv")))
    return checker.check([path])


FLAT = """\
<!-- source: SOURCE -->

| attack | defense | setting | CA % after | RA-ASR % |
|---|---|---|---:|---:|
| badnet | **bibau** | 60:0.1:1e-4 | 94.7 | 2.1 |
| badnet | no defense | 60:0.1:1e-4 | 96.2 | 99.9 |
| blended | bibau | 60:0.1:1e-4 | 93.8 | 35.7 |
"""

PIVOT = """\
<!-- source: SOURCE; rename: backdoored, no defense=none -->
| model | BadNet: 60 steps (120 steps) | Blended: 60 (120) |
|---|---:|---:|
| backdoored, no defense | 99.9 ± 0.2 (99.8 ± 0.2) | 96.1 ± 3.3 (96.0 ± 3.0) |
| **bibau** | **2.1 ± 2.0** (2.5 ± 2.0) | **35.7 ± 7.3** (46.4 ± 13.7) |
"""


def test_the_committed_docs_agree_with_their_sources():
    checker = load_script("benchmarks/check_numbers.py")
    report = checker.check(checker.document_paths())
    assert report.mismatches == []
    # the side-by-side, persistence and mechanisms tables of benchmarks/README.md, the generated results/*.md tables
    # and the README's paragraph are checked (their source comments are in place)
    assert report.tables_checked >= 7 and report.paragraphs_checked >= 1 and report.cells_checked > 900
    # and no measured-looking number is left without a source, a date or a settings marker (--strict)
    assert report.unsourced == []


def test_a_flat_table_is_checked_cell_by_cell(tmp_path):
    report = check(tmp_path, FLAT.replace("no defense", "none"))
    assert report.mismatches == [] and report.cells_checked == 6
    wrong = check(tmp_path, FLAT.replace("no defense", "none").replace("| 93.8 |", "| 93.9 |"))
    assert len(wrong.mismatches) == 1 and "shows 93.9; the source's ca_after x100 is 93.8" in wrong.mismatches[0]


def test_a_row_the_source_does_not_hold_is_reported(tmp_path):
    report = check(tmp_path, FLAT)  # "no defense" is not a defense of the source and not renamed
    assert any("no row of the source" in problem for problem in report.mismatches)


def test_a_pivot_table_with_renamed_rows(tmp_path):
    assert check(tmp_path, PIVOT).mismatches == []
    wrong = check(tmp_path, PIVOT.replace("(46.4 ± 13.7)", "(46.4 ± 13.9)"))
    assert len(wrong.mismatches) == 1 and "ra_asr_std x100 is 13.7" in wrong.mismatches[0]


def test_a_sourced_paragraph_and_the_unsourced_report(tmp_path):
    text = "<!-- source: SOURCE -->\nBI-BAU brings BadNet back to 2.1% (60 steps) and Blended to 35.7%.\n\n"
    assert check(tmp_path, text).mismatches == []
    assert len(check(tmp_path, text.replace("35.7%", "35.2%")).mismatches) == 1
    unsourced = check(tmp_path, "A run reached 91.3% ASR with `--lr 2e-3` (arXiv 2606.14078, torch >= 2.6).\n")
    assert len(unsourced.unsourced) == 1 and ", 1 numbers:" in unsourced.unsourced[0]
    dated = check(tmp_path, "On 2026-12-02 a run reached 91.3% ASR.\n")
    assert dated.unsourced == [] and dated.history == 1
    table = "| run | ASR % |\n|---|---:|\n| a | 91.3 |\n"
    marked = check(tmp_path, "<!-- history: 2026-11-23, commit b362e03 -->\n" + table)
    assert marked.unsourced == [] and marked.history == 1


def test_a_derived_table_of_aggregates_is_neither_checked_nor_unsourced(tmp_path):
    table = "| split | ROC-AUC | detected |\n|---|---:|---|\n| held-out | 0.600 | 40.0% |\n"
    derived = check(tmp_path, f"<!-- derived: SOURCE, by a script -->\n{table}")
    assert derived.mismatches == [] and derived.unsourced == [] and derived.history == 2
    assert check(tmp_path, table).unsourced  # the same table without the mark is listed


def test_a_block_of_settings_is_neither_checked_nor_unsourced(tmp_path):
    text = "The budget starts at 0.4% of the image and grows to 3%.\n"
    assert len(check(tmp_path, text).unsourced) == 1
    settings = check(tmp_path, "<!-- settings -->\n" + text)
    assert settings.unsourced == [] and settings.mismatches == [] and settings.settings == 2
    # the marker covers the block below it only: the next paragraph is judged on its own
    both = check(tmp_path, "<!-- settings -->\n" + text + "\nA run reached 91.3% ASR.\n")
    assert len(both.unsourced) == 1 and "91.3" in both.unsourced[0]


def test_a_class_column_is_keyed_to_the_source_column_that_agrees_row_by_row(tmp_path):
    # "named" shows classes that are also values of two other columns: only recovered_target agrees with each row
    checker = load_script("benchmarks/check_numbers.py")
    (tmp_path / "zoo.csv").write_text(
        "name,max_candidate,recovered_target,untargeted_winner,score\n"
        "m1,two,eight,eight,1.16\n"
        "m2,two,two,two,3.44\n"
        "m3,eight,six,six,1.52\n"
    )
    table = (
        "| model | named | score |\n|---|---|---:|\n| m1 | eight | 1.16 |\n| m2 | two | 3.44 |\n| m3 | six | 1.52 |\n"
    )
    path = tmp_path / "doc.md"
    path.write_text(f"<!-- source: {tmp_path / 'zoo.csv'} -->\n{table}")
    report = checker.check([path])
    assert report.mismatches == [] and report.cells_checked == 3
    path.write_text(f"<!-- source: {tmp_path / 'zoo.csv'} -->\n{table.replace('| m1 | eight |', '| m1 | two |')}")
    assert any("no row of the source" in problem for problem in checker.check([path]).mismatches)


def test_a_numeric_column_named_like_its_source_column_is_a_key(tmp_path):
    # two model seeds: without the seed as a key, each row's number could come from either seed's row
    checker = load_script("benchmarks/check_numbers.py")
    (tmp_path / "results.csv").write_text(
        "seed,attack,recovered_target,peak_memory_mb\n0,badnet,six,1203.7\n1,badnet,zero,1191.1\n"
    )
    table = "| seed | attack | peak MiB |\n|---|---|---:|\n| 0 | badnet | 1204 |\n| 1 | badnet | 1191 |\n"
    path = tmp_path / "doc.md"
    path.write_text(f"<!-- source: {tmp_path / 'results.csv'} -->\n{table}")
    report = checker.check([path])
    assert report.mismatches == [] and report.cells_checked == 2
    path.write_text(
        f"<!-- source: {tmp_path / 'results.csv'} -->\n{table.replace('| 1 | badnet | 1191', '| 1 | badnet | 1204')}"
    )
    assert any("1204" in problem for problem in checker.check([path]).mismatches)
    path.write_text(f"<!-- source: {tmp_path / 'results.csv'} -->\n{table.replace('| 1 |', '| 2 |')}")
    assert any("no row of the source" in problem for problem in checker.check([path]).mismatches)
