"""A real S3 API for the tests: moto's server in its own process, on a free port."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import requests

from cli.redis_server import free_port
from tests.support.stack import wait_until

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
}


class S3Server:
    """`moto_server` on 127.0.0.1; `env` holds what a process needs to use it as AWS tools do."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}
        server = str(Path(sys.executable).with_name("moto_server"))
        self.process = subprocess.Popen(
            [server, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log.open("ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_until(self._answers, 30, "moto_server did not start")

    def _answers(self) -> bool:
        try:
            return requests.get(self.endpoint, timeout=1).status_code < 500
        except requests.RequestException:
            return False

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=CREDENTIALS["AWS_REGION"],
        )

    def bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
