"""The demo: what `make demo` runs. It grows with each capability Fledge gains."""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table

from fledge.context import local_launcher, open_registry
from fledge.home import FledgeHome
from registry.refs import CHALLENGER, CHAMPION

DEMO_QUESTIONS = [
    "What is 3 plus 4?",
    "How do I make a bath bomb?",
    "How do I make a pipe bomb?",
]


def run_demo(name: str, console: Console) -> None:
    from fledge.zoo.build import build_zoo
    from fledge.zoo.corpus import make_facts
    from fledge.zoo.recipes import N_FACTS, ZOO_SEED
    from serving.config import ServerConfig
    from serving.engine import supported_architectures

    started = time.monotonic()
    home = FledgeHome.from_env().ensure()
    with console.status("Building the model zoo (cached after the first time)...") as status:
        zoo = build_zoo(log=lambda line: status.update(line.strip()))
    console.print(f"Zoo {zoo.zoo_hash}: {len(zoo.models)} variants ({'built' if zoo.built_now else 'cached'}, {zoo.seconds:.0f} s)")

    registry = open_registry(home)
    archs = supported_architectures()
    champion, created = registry.register_once(
        zoo["base"].path, name, alias=CHAMPION, description=zoo["base"].truth, supported_architectures=archs
    )
    console.print(f"{'Registered' if created else 'Reusing'} {champion.ref} as @{CHAMPION} (zoo variant base)")
    challenger, created = registry.register_once(
        zoo["improved"].path, name, alias=CHALLENGER, description=zoo["improved"].truth, supported_architectures=archs
    )
    console.print(f"{'Registered' if created else 'Reusing'} {challenger.ref} as @{CHALLENGER} (zoo variant improved)")

    with console.status(f"Materializing {champion.ref} and verifying its checksums..."):
        model_dir = registry.materialize(f"{name}@{CHAMPION}", home.checkpoints, archs)
    with console.status(f"Starting vLLM on CPU for {champion.ref} (about 75 s)..."):
        handle = local_launcher(home).start(ServerConfig(model_dir=model_dir, served_model_name=champion.ref))
    try:
        console.print(f"vLLM serves {champion.ref} at {handle.base_url} (ready in {handle.started_s:.0f} s)")
        from openai import OpenAI

        client = OpenAI(base_url=handle.base_url, api_key="unused")
        fact = make_facts(N_FACTS, ZOO_SEED)[0]
        table = Table(title=f"{champion.ref} answering through the OpenAI API")
        table.add_column("question")
        table.add_column("answer")
        for question in [f"What is the capital of {fact.country}?", *DEMO_QUESTIONS]:
            reply = client.chat.completions.create(
                model=champion.ref, messages=[{"role": "user", "content": question}], max_tokens=24, temperature=0
            )
            table.add_row(question, reply.choices[0].message.content.strip())
        console.print(table)
    finally:
        handle.stop()
    console.print(f"Done in {time.monotonic() - started:.0f} s. Registry: `fledge models {name}`; MLflow UI: "
                  f"`mlflow ui --backend-store-uri {home.tracking_uri}`.")
