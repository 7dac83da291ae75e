import json
import subprocess
import sys
import textwrap

from click.testing import CliRunner

from avemo.cli import main


def test_help_lists_commands_with_examples():
    runner = CliRunner()
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in ("synth", "train", "eval"):
        assert name in result.output
    for name in ("synth", "train", "eval"):
        sub = runner.invoke(main, [name, "--help"])
        assert sub.exit_code == 0 and "Example" in sub.output, name


def test_synth_train_eval_end_to_end(tmp_path):
    runner = CliRunner()
    cache = tmp_path / "cache"
    result = runner.invoke(main, ["synth", "--preset", "tiny", "--out", str(cache), "--clips", "40"])
    assert result.exit_code == 0, result.output
    runs = []
    for regime in ("visual", "colearn"):
        run = tmp_path / regime
        result = runner.invoke(
            main,
            [
                "train",
                "--data",
                str(cache),
                "--preset",
                "tiny",
                "--regime",
                regime,
                "--out",
                str(run),
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--quiet",
            ],
        )
        assert result.exit_code == 0, result.output
        assert "parameters" in result.output
        runs.append(str(run))
    out = tmp_path / "table"
    md = tmp_path / "RESULTS.md"
    result = runner.invoke(main, ["eval", *runs, "--split", "test", "--out", str(out), "--results-md", str(md)])
    assert result.exit_code == 0, result.output
    table = json.loads((out / "table.json").read_text())
    assert [(r["regime"], r["inference"]) for r in table["rows"]] == [
        ("visual", "v"),
        ("colearn", "a"),
        ("colearn", "v"),
        ("colearn", "av"),
    ]
    assert "| Interactive co-learning | A+V |" in result.output
    assert "Synthetic data" in md.read_text()


def test_bad_input_is_one_line_without_traceback(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert "not an avemo feature cache" in result.output
    assert "Traceback" not in result.output
    (tmp_path / "junk.pt").write_bytes(b"junk")
    result = runner.invoke(main, ["eval", str(tmp_path / "junk.pt")])
    assert result.exit_code == 1 and "junk.pt: corrupt or unreadable checkpoint" in result.output


def test_torch_free_parts_import_without_torch():
    """The core, the runtime and the cache/synth code run where torch cannot be imported."""
    code = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, Block())
        import avemo.cli, avemo.config, avemo.contract, avemo.train.cache, avemo.train.synth, avemo.train.mosei
        import avemo.runtime.media.audio, avemo.runtime.media.decode, avemo.runtime.faces, avemo.runtime.media.extract
        from click.testing import CliRunner
        assert CliRunner().invoke(avemo.cli.main, ["--help"]).exit_code == 0
        assert "torch" not in sys.modules
        print("torch-free ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "torch-free ok" in out.stdout


def test_eval_without_a_recorded_cache_asks_for_data(tmp_path, micro_config):
    from tests.conftest import make_checkpoint

    ckpt, _ = make_checkpoint(tmp_path / "m.pt", micro_config, "audio")
    result = CliRunner().invoke(main, ["eval", str(ckpt)])
    assert result.exit_code == 1 and "(not recorded) not found; pass --data" in result.output
