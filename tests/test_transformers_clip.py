"""transformers CLIPModel support: loading (folder, offline Hub cache), the pixel interface, broken tokenizers,
saving in transformers and open_clip layouts, and an end-to-end clean with recipes/clean_clip.py."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from conftest import launch_two_processes
from hub_cache import lay_out_hub_cache
from open_clip.tokenizer import bytes_to_unicode
from test_clean_recipe import load_recipe, tiny_args
from test_defenses import TINY as TINY_DEFENSE_OPTIONS
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

from clipclean.defenses import DEFENSES, DefenseContext, build_defense
from clipclean.hub import push_to_hub, read_sidecar, save_pretrained
from clipclean.models import CONFIG_FILENAME, ModelLoadError, PixelCLIP, load_clip
from clipclean.transformers_clip import TransformersCLIP
from clipclean.triggers import PatchBlendTrigger, save_trigger

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def tiny_vocabulary() -> dict[str, int]:
    """A character-level byte BPE vocabulary (no merges); end-of-text is the highest id, as in OpenAI's."""
    characters = list(bytes_to_unicode().values())
    tokens = characters + [c + "</w>" for c in characters] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}


def build_tiny_transformers_clip(folder: Path, seed: int = 0) -> Path:
    """A random-init 32x32 transformers CLIPModel with its tokenizer and image processor, saved to ``folder``."""
    vocabulary = tiny_vocabulary()
    eos = vocabulary["<|endoftext|>"]
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocabulary),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=24,
            bos_token_id=vocabulary["<|startoftext|>"],
            eos_token_id=eos,
            pad_token_id=eos,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    CLIPTokenizer(vocab=vocabulary, merges=[]).save_pretrained(folder)
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_mean=list(MEAN), image_std=list(STD)
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    return build_tiny_transformers_clip(tmp_path_factory.mktemp("hf") / "tiny-hf-clip")


def probe(model) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return images, model.tokenize(["a photo of a cat", "a dog", "the number seven written by hand."])


def test_a_transformers_folder_loads_behind_the_pixel_interface(hf_folder):
    model = load_clip(str(hf_folder))
    assert isinstance(model, TransformersCLIP) and isinstance(model, PixelCLIP)
    assert model.image_size == (32, 32) and model.embed_dim == 16 and model.context_length == 24
    reference = CLIPModel.from_pretrained(hf_folder).eval()
    images, tokens = probe(model)
    assert tokens.shape == (3, 24)
    normalised = (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected_images = reference.get_image_features(pixel_values=normalised).pooler_output
        expected_text = reference.get_text_features(input_ids=tokens).pooler_output
        image_features, text_features, logit_scale = model(images, tokens)
    torch.testing.assert_close(image_features, torch.nn.functional.normalize(expected_images, dim=-1))
    torch.testing.assert_close(text_features, torch.nn.functional.normalize(expected_text, dim=-1))
    torch.testing.assert_close(logit_scale, reference.logit_scale.exp())
    # padding never changes a caption's embedding (pooled at the first end-of-text token, causal attention)
    single = model.encode_text(["a dog"])
    torch.testing.assert_close(single[0], text_features[1])
    # the image tower and the temperature the defenses and training use
    visual = {id(p) for p in model.model.visual.parameters()}
    assert visual and visual < {id(p) for p in model.parameters()}
    assert model.model.logit_scale is model.clip.logit_scale
    # a fresh copy is independent
    copy = model.fresh_copy()
    with torch.no_grad():
        next(copy.model.visual.parameters()).add_(1.0)
    assert not torch.equal(next(copy.model.visual.parameters()), next(model.model.visual.parameters()))


def test_a_transformers_repo_loads_from_an_offline_hub_cache(hf_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lay_out_hub_cache(hf_folder, tmp_path / "cache", "some-org/tiny-hf-clip")
    model = load_clip("hf-hub:some-org/tiny-hf-clip", cache_dir=str(tmp_path / "cache"))
    assert isinstance(model, TransformersCLIP)
    local = load_clip(str(hf_folder))
    images, tokens = probe(model)
    with torch.no_grad():
        assert torch.equal(model.encode_image(images), local.encode_image(images))
        assert torch.equal(model.encode_text(tokens), local.encode_text(tokens))


def test_a_broken_tokenizer_is_refused(hf_folder, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(hf_folder, broken)
    # What an incomplete offline cache looks like: a tokenizer config but no vocabulary files. transformers then
    # silently builds a 2-token CLIPTokenizer.
    (broken / "tokenizer.json").unlink()
    assert len(CLIPTokenizer.from_pretrained(broken)) <= 3
    with pytest.raises(ModelLoadError, match="tokenizer .* is broken"):
        load_clip(str(broken))


def test_an_open_clip_folder_with_a_config_json_stays_open_clip(tiny_clip, tmp_path):
    folder = save_pretrained(tiny_clip, tmp_path / "open_clip")
    (folder / "config.json").write_text(json.dumps({"model_type": "clip"}))
    assert type(load_clip(str(folder))) is PixelCLIP


def test_save_in_transformers_layout_reloads_in_transformers(hf_folder, tmp_path, monkeypatch):
    model = load_clip(str(hf_folder))
    with torch.no_grad():
        model.clip.visual_projection.weight.mul_(0.5)  # a "cleaned" model differs from the source
    saved = save_pretrained(model, tmp_path / "cleaned", metrics={"after": {"attack_success_rate": 0.02}})
    names = {path.name for path in saved.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= names
    assert {"README.md", "clipclean.json"} <= names and CONFIG_FILENAME not in names
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in names)
    reloaded = CLIPModel.from_pretrained(saved)
    for key, value in model.clip.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key
    assert tuple(CLIPImageProcessor.from_pretrained(saved).image_mean) == MEAN
    card = (saved / "README.md").read_text()
    assert "library_name: transformers" in card and "CLIPModel.from_pretrained" in card and "2.00%" in card
    assert read_sidecar(saved)["metrics"]["after"]["attack_success_rate"] == 0.02
    assert isinstance(load_clip(str(saved)), TransformersCLIP)

    api = SimpleNamespace(
        create_repo=lambda repo_id, **kw: SimpleNamespace(repo_id=repo_id),
        upload_folder=lambda **kw: calls.append(kw) or SimpleNamespace(commit_url="https://hf.co/x/commit/1"),
    )
    calls: list[dict] = []
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: api)
    push_to_hub(saved, "org/cleaned")
    patterns = calls[0]["allow_patterns"]
    assert {"config.json", "model*.safetensors", "tokenizer.json", "preprocessor_config.json"} <= set(patterns)
    assert "org/cleaned" in (saved / "README.md").read_text()


def test_conversion_to_open_clip_gives_the_same_embeddings(hf_folder, tmp_path):
    model = load_clip(str(hf_folder))
    converted = model.to_open_clip()
    assert type(converted) is PixelCLIP and converted.model_config["quick_gelu"] is True
    images, tokens = probe(model)
    with torch.no_grad():
        torch.testing.assert_close(converted.encode_image(images), model.encode_image(images), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(converted.encode_text(tokens), model.encode_text(tokens), atol=1e-5, rtol=1e-5)
    saved = save_pretrained(model, tmp_path / "as_open_clip", layout="open_clip")
    assert (saved / CONFIG_FILENAME).is_file() and not (saved / "config.json").exists()
    reloaded = load_clip(str(saved))
    assert type(reloaded) is PixelCLIP and torch.equal(reloaded.image_mean.flatten(), torch.tensor(MEAN))
    with torch.no_grad():
        torch.testing.assert_close(reloaded.encode_image(images), model.encode_image(images), atol=1e-5, rtol=1e-5)
        # open_clip's own tokenizer reads the folder; compare on the same token ids
        torch.testing.assert_close(
            reloaded.model.encode_text(tokens, normalize=True), model.encode_text(tokens), atol=1e-5, rtol=1e-5
        )


def test_clean_recipe_cleans_a_transformers_model_end_to_end(hf_folder, tmp_path):
    trigger = PatchBlendTrigger.patch(32, 4, "bottom-right", "white")
    save_trigger(trigger, tmp_path / "trigger", metadata={"target": "zero"})
    output = tmp_path / "run"
    results = load_recipe().main(tiny_args(tmp_path, output, "--model", str(hf_folder), "--rounds", "1"))
    assert results["inversion"]["verdict"] in ("backdoored", "no backdoor found")
    assert 0 <= results["after"]["clean_accuracy"] <= 1 and 0 <= results["after"]["attack_success_rate"] <= 1
    cleaned = output / "cleaned"
    assert (cleaned / "config.json").is_file() and (cleaned / "model.safetensors").is_file()
    reloaded = CLIPModel.from_pretrained(cleaned)
    source = CLIPModel.from_pretrained(hf_folder)
    changed = [k for k, v in source.state_dict().items() if not torch.equal(v, reloaded.state_dict()[k])]
    assert changed, "unlearning left every weight unchanged"
    assert (output / "inversion" / "trigger.png").is_file()


def test_clean_recipe_saves_a_transformers_model_as_open_clip_when_asked(hf_folder, tmp_path):
    save_trigger(
        PatchBlendTrigger.patch(32, 4, "bottom-right", "white"), tmp_path / "trigger", metadata={"target": "zero"}
    )
    output = tmp_path / "run"
    arguments = tiny_args(tmp_path, output, "--model", str(hf_folder), "--rounds", "1", "--save-layout", "open_clip")
    results = load_recipe().main(arguments)
    cleaned = output / "cleaned"
    assert (cleaned / CONFIG_FILENAME).is_file() and not (cleaned / "config.json").exists()
    reloaded = load_clip(str(cleaned))
    assert type(reloaded) is PixelCLIP and reloaded.image_size == (32, 32)
    assert 0 <= results["after"]["clean_accuracy"] <= 1


@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_every_defense_steps_on_a_transformers_model(name, hf_folder):
    """The defenses only use the PixelCLIP interface (AGE finds the vision transformer's MLPs in either layout)."""
    model = load_clip(str(hf_folder))
    names = ["zero", "one", "two", "three"]
    images = torch.rand(32, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    tokens = model.tokenize([f"a handwritten digit {names[i % 4]}." for i in range(32)])
    batches = [(images[:16], tokens[:16]), (images[16:], tokens[16:])]
    context = DefenseContext(
        candidate_names=names,
        candidate_embeddings=model.encode_text([f"a handwritten digit {n}." for n in names]).detach(),
        reference=model.fresh_copy().requires_grad_(False),
    )
    overrides = TINY_DEFENSE_OPTIONS.get(name, {})
    defense = build_defense(name, model, context, overrides)
    defense.begin_round(0, batches)
    if name == "age":  # the edited units are transformers' CLIPMLP fc1 rows and fc2 columns
        layers = model.model.clip.vision_model.encoder.layers
        assert sorted(defense.edited_units) == defense.block_indices and defense.edited_units
        for index, units in defense.edited_units.items():
            fc1, fc2 = layers[index].mlp.fc1, layers[index].mlp.fc2
            assert units and float(fc1.weight.detach()[units].abs().sum()) == 0
            assert float(fc1.bias.detach()[units].abs().sum()) == 0 == float(fc2.weight.detach()[:, units].abs().sum())
    trainable = {id(p) for p in defense.trainable_parameters()}
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in trainable)
    model.train()
    losses, _ = defense.forward(model, batches[0])
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.parameters())


@pytest.mark.slow
def test_clean_recipe_cleans_a_transformers_model_with_two_processes(hf_folder, tmp_path):
    """~30 s: DDP over the transformers towers; the trigger stays identical across ranks."""
    output = tmp_path / "two"
    save_trigger(
        PatchBlendTrigger.patch(32, 4, "bottom-right", "white"), tmp_path / "trigger", metadata={"target": "zero"}
    )
    launch_two_processes(
        "recipes/clean_clip.py",
        *tiny_args(tmp_path, output, "--model", str(hf_folder), "--rounds", "1", "--batch-size", "16"),
    )
    results = json.loads((output / "results.json").read_text())
    assert results["world_size"] == 2 and results["trigger_identical_across_ranks"] is True
    assert isinstance(load_clip(str(output / "cleaned")), TransformersCLIP)
