"""Typed configuration of one vLLM OpenAI-compatible server, whatever launches it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_dir: Path = Field(description="Materialized checkpoint directory (verified by the registry).")
    served_model_name: str = Field(description="Name clients use; Fledge uses NAME/VERSION.")
    host: str = "127.0.0.1"
    port: int | None = Field(None, description="None picks a free port.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    max_model_len: int = Field(256, gt=0)
    max_num_seqs: int = Field(32, gt=0)
    kv_cache_gib: float = Field(1.0, gt=0, description="VLLM_CPU_KVCACHE_SPACE on CPU.")
    cpu_cores: str | None = Field(
        None, description="VLLM_CPU_OMP_THREADS_BIND, e.g. '0' or '0-1'; give each instance its own cores."
    )
    enforce_eager: bool = Field(True, description="Skips about a minute of graph compilation on CPU.")
    seed: int = 0
    startup_timeout_s: float = Field(300.0, gt=0)
    stop_grace_s: float = Field(20.0, ge=0)
    enable_lora: bool = Field(False, description="Serve LoRA adapters loaded at run time (/v1/load_lora_adapter).")
    max_lora_rank: int = Field(16, ge=1)
    max_loras: int = Field(2, ge=1)
    lora_target_modules: list[str] | None = Field(
        None, description="vLLM's --lora-target-modules: the layers adapters may change (None: every one vLLM supports).")
    extra_args: list[str] = Field(default_factory=list)


def vllm_server_args(config: ServerConfig, model_path: str, port: int) -> list[str]:
    """Arguments of `vllm.entrypoints.openai.api_server`, shared by every launcher."""
    args = [
        "--model", model_path,
        "--served-model-name", config.served_model_name,
        "--host", config.host,
        "--port", str(port),
        "--dtype", config.dtype,
        "--max-model-len", str(config.max_model_len),
        "--max-num-seqs", str(config.max_num_seqs),
        "--seed", str(config.seed),
        # lm-eval's remote tokenizer reads it, so evaluations tokenize exactly as the server does.
        "--enable-tokenizer-info-endpoint",
    ]
    if config.enforce_eager:
        args.append("--enforce-eager")
    if config.enable_lora:
        args += ["--enable-lora", "--max-lora-rank", str(config.max_lora_rank), "--max-loras", str(config.max_loras)]
        if config.lora_target_modules:
            args += ["--lora-target-modules", *config.lora_target_modules]
    return args + list(config.extra_args)


def lora_signature(config: ServerConfig) -> str | None:
    """The LoRA settings a running server was started with, comparable between configs."""
    if not config.enable_lora:
        return None
    return f"rank {config.max_lora_rank}, {config.max_loras} adapters, layers {','.join(config.lora_target_modules or ['all'])}"


def vllm_server_environment(config: ServerConfig) -> dict[str, str]:
    """Environment every launcher adds for `config` (the CPU-specific settings aside)."""
    # Adapters are loaded and unloaded while the server runs; vLLM allows that only when asked.
    return {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"} if config.enable_lora else {}
