"""LoRA adapters on a running vLLM server: loaded and unloaded at run time through vLLM's own
endpoints (`/v1/load_lora_adapter`, `/v1/unload_lora_adapter`; the server runs with
`--enable-lora` and VLLM_ALLOW_RUNTIME_LORA_UPDATING), and listed by `/v1/models`."""

from __future__ import annotations

from pathlib import Path

import httpx

from fledge.core.openai_errors import error_message
from serving.errors import LaunchError


def served_names(base_url: str, timeout_s: float = 10.0) -> set[str]:
    """The model names the server answers to: its base model and every loaded adapter."""
    response = httpx.get(f"{base_url.rstrip('/')}/models", timeout=timeout_s)
    response.raise_for_status()
    return {entry["id"] for entry in response.json().get("data", [])}


def load_adapter(base_url: str, name: str, adapter_dir: Path, timeout_s: float = 120.0) -> None:
    """Load the adapter in `adapter_dir` under `name`; a no-op when it is loaded already."""
    if name in served_names(base_url):
        return
    response = httpx.post(f"{base_url.rstrip('/')}/load_lora_adapter",
                          json={"lora_name": name, "lora_path": str(adapter_dir)}, timeout=timeout_s)
    if response.status_code >= 400 and name not in served_names(base_url):
        raise LaunchError(
            f"vLLM at {base_url} did not load the LoRA adapter {name} from {adapter_dir} (HTTP {response.status_code}: "
            f"{error_message(response.text, 300)}). The server must run with LoRA enabled (policy serving.lora.enabled) and a "
            "--max-lora-rank at least the adapter's rank."
        )


def unload_adapter(base_url: str, name: str, timeout_s: float = 60.0) -> bool:
    """Unload `name`; False when the server did not hold it (or no longer answers)."""
    try:
        if name not in served_names(base_url):
            return False
        response = httpx.post(f"{base_url.rstrip('/')}/unload_lora_adapter", json={"lora_name": name}, timeout=timeout_s)
    except httpx.HTTPError:
        return False
    return response.status_code < 400
