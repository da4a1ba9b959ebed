"""The generic OpenAI-compatible backend (``openai``), shipped with the core.

Works with any server that speaks ``/v1/chat/completions`` with image parts
(and generates images over ``/v1/images/generations``, see ``openai_images``):
Ollama, llama.cpp's server, LM Studio, KoboldCpp, text-generation-webui,
OpenRouter, OpenAI, and Gemini's and DashScope's OpenAI-compatible endpoints.
``preset`` fills in the base URL and the API-key variable of a known service;
an explicit ``base_url`` / ``api_key_env`` still wins.
"""

from __future__ import annotations

import attrs

from ..models import Capabilities
from ..openai_compat import OpenAICompatBackend
from ..openai_images import OpenAIImagesMixin
from ..settings import BackendSettings

#: name -> (base URL, API-key environment variable or None)
PRESETS: dict[str, tuple[str, str | None]] = {
    "ollama": ("http://localhost:11434/v1", None),
    "llamacpp": ("http://localhost:8080/v1", None),
    "lmstudio": ("http://localhost:1234/v1", None),
    "koboldcpp": ("http://localhost:5001/v1", None),
    "textgen-webui": ("http://localhost:5000/v1", None),
    "triton-openai": ("http://localhost:9000/v1", None),
    "openrouter": ("https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
    "openai": ("https://api.openai.com/v1", "OPENAI_API_KEY"),
    "gemini": ("https://generativelanguage.googleapis.com/v1beta/openai", "GEMINI_API_KEY"),
    "dashscope": ("https://dashscope-intl.aliyuncs.com/compatible-mode/v1", "DASHSCOPE_API_KEY"),
}


def _check_preset(instance: object, attribute: attrs.Attribute, value: str | None) -> None:
    if value is not None and value not in PRESETS:
        raise ValueError(f"unknown preset {value!r}; known presets: {', '.join(sorted(PRESETS))}")


@attrs.frozen(slots=True)
class OpenAISettings(BackendSettings):
    """Settings of the generic backend.

    Attributes:
        preset: A known service or local server (``ollama``, ``llamacpp``,
            ``lmstudio``, ``koboldcpp``, ``textgen-webui``, ``triton-openai``,
            ``openrouter``, ``openai``, ``gemini``, ``dashscope``): fills in
            ``base_url`` and ``api_key_env`` when those are unset.
        image_model: The model for image generation (``dall-e-3``,
            ``gpt-image-1`` ...) when a request names none; unset, the
            server's default (OpenAI: ``dall-e-2``).  ``model`` is the chat model.
    """

    preset: str | None = attrs.field(default=None, validator=_check_preset)
    image_model: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.preset is None:
            return
        url, key_env = PRESETS[self.preset]
        if self.base_url is None:
            object.__setattr__(self, "base_url", url)
        if self.api_key_env is None and key_env is not None:
            object.__setattr__(self, "api_key_env", key_env)


class OpenAIBackend(OpenAICompatBackend, OpenAIImagesMixin):
    name = "openai"
    description = "Any OpenAI-compatible server (Ollama, llama.cpp, LM Studio, OpenRouter, OpenAI, ...)"
    default_base_url = "http://localhost:8000/v1"
    capabilities = Capabilities(
        vision=True,
        streaming=True,
        max_images=None,
        model_switch=True,
        kinds=("vision", "text", "image_generation"),
    )
    settings_cls = OpenAISettings
    launch_hints = (
        'ollama serve   (then: backends.openai.preset = "ollama")',
        'llama-server -m MODEL.gguf --mmproj MMPROJ.gguf --port 8080   (preset "llamacpp")',
        'lms server start   (LM Studio, port 1234; preset "lmstudio")',
    )
    docs_url = "docs/backends/openai.md"
    #: a base URL with a path (``/api/v1``, ``/v1beta/openai``) is used as given
    force_v1 = False


#: The entry-point target: a stateless plugin object (per-client state lives in the context).
plugin = OpenAIBackend()
