"""A family's processor, with or without torchvision.

    processor = load_processor(family, "Qwen/Qwen2.5-Omni-3B")

Omni-modal processors (Qwen2.5-Omni's, Gemma's) hold an image and a video processor besides the
Whisper-style feature extractor and the tokenizer, and transformers' video processors need
torchvision. cordlite turns audio and text into prompts, never images: where torchvision is not
installed (or not importable with this torch), the family's own processor class is built without
its image and video processors. Its prompts are the real class's (its __call__, audio placeholder
expansion and chat template run unchanged), it refuses images and videos, and save_pretrained
writes the checkpoint's processor files back with the image processor's settings kept.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

VISION_PARTS = ("image_processor", "video_processor")
PROCESSOR_FILES = ("preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json",
                   "chat_template.jinja", "chat_template.json")


def torchvision_usable() -> bool:
    """Whether torchvision imports with this torch (a CUDA wheel beside a CPU torch does not)."""
    from transformers.utils import is_torchvision_available

    if not is_torchvision_available():
        return False
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means: build without it
        return False
    return True


def load_processor(family, name_or_path: str, revision: str | None = None):
    """AutoProcessor.from_pretrained, or the audio-and-text form of the family's processor class
    where that class needs torchvision and it is not usable."""
    from transformers import AutoProcessor

    kwargs = {"revision": revision} if revision else {}
    if family.processor_class and not torchvision_usable():
        try:
            return audio_text_processor(family.processor_class, name_or_path, **kwargs)
        except (AttributeError, KeyError, TypeError) as e:  # a tokenizer without the class's named tokens, ...
            raise ValueError(f"{name_or_path}: its processor files do not make a {family.processor_class} "
                             f"({type(e).__name__}: {e}); install a torchvision that matches torch to load it "
                             "with AutoProcessor, or check the checkpoint's tokenizer_config.json") from None
    return AutoProcessor.from_pretrained(name_or_path, **kwargs)


def _read(name_or_path: str, filename: str, **kwargs) -> str | None:
    """A file of a checkpoint directory or hub repo (None when it has none)."""
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        path = local / filename
        return path.read_text(encoding="utf-8") if path.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(name_or_path, filename, **kwargs)).read_text(encoding="utf-8")
    except EntryNotFoundError:
        return None


def _chat_template(files: dict[str, str], tokenizer) -> str | None:
    if files.get("chat_template.jinja") is not None:
        return files["chat_template.jinja"]
    if files.get("chat_template.json") is not None:
        return json.loads(files["chat_template.json"]).get("chat_template")
    return getattr(tokenizer, "chat_template", None)


def audio_text_class(cls: type) -> type:
    """`cls` (an omni-modal ProcessorMixin class) accepting None for its image and video processors."""

    class AudioTextProcessor(cls):
        source_files: dict[str, str] = {}

        def check_argument_for_proper_class(self, argument_name, argument):
            if argument is None and argument_name in VISION_PARTS:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

        def __call__(self, *args, images=None, videos=None, **kwargs):
            if images is not None or videos is not None:
                raise ValueError(f"{cls.__name__} was built without its image and video processors (torchvision is "
                                 "not usable here): pass audio and text only, or install a torchvision that matches torch")
            return super().__call__(*args, **kwargs)

        def save_pretrained(self, save_directory, **kwargs):
            """The tokenizer, the feature extractor, the chat template; preprocessor_config.json keeps the
            checkpoint's image processor settings and names the real processor class."""
            out = Path(save_directory)
            out.mkdir(parents=True, exist_ok=True)
            self.tokenizer.save_pretrained(out)
            config = json.loads(self.source_files.get("preprocessor_config.json") or "{}")
            config.update(json.loads(self.feature_extractor.to_json_string()))  # arrays as lists
            config["processor_class"] = cls.__name__
            (out / "preprocessor_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n",
                                                          encoding="utf-8")
            for name in ("video_preprocessor_config.json", "processor_config.json"):
                if self.source_files.get(name) is not None:
                    (out / name).write_text(self.source_files[name], encoding="utf-8")
            if self.chat_template:
                (out / "chat_template.jinja").write_text(self.chat_template, encoding="utf-8")
            return [str(out)]

    AudioTextProcessor.__name__ = AudioTextProcessor.__qualname__ = f"{cls.__name__}AudioText"
    return AudioTextProcessor


def audio_text_processor(class_name: str, name_or_path: str, **kwargs):
    """The processor class `class_name` of a checkpoint, built from its feature extractor,
    tokenizer and chat template, with no image or video processor."""
    import transformers
    from transformers import AutoFeatureExtractor, AutoTokenizer

    cls = audio_text_class(getattr(transformers, class_name))
    files = {name: _read(name_or_path, name, **kwargs) for name in PROCESSOR_FILES}
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    parts = {"feature_extractor": AutoFeatureExtractor.from_pretrained(name_or_path, **kwargs), "tokenizer": tokenizer}
    init = inspect.signature(cls.__init__).parameters
    args = {name: parts.get(name) for name in cls.get_attributes()}
    missing = [name for name, value in args.items() if value is None and name not in VISION_PARTS]
    if missing:
        raise ValueError(f"{class_name}: cannot build it without torchvision: it also needs {', '.join(missing)}")
    extra = json.loads(files.get("processor_config.json") or "{}")
    args.update({k: v for k, v in extra.items() if k in init and k not in args and k != "chat_template"})
    processor = cls(**args, chat_template=_chat_template(files, tokenizer))
    processor.source_files = {k: v for k, v in files.items() if v is not None}
    return processor
