"""The local AWS stack: moto server, an IAM controller user, an instance role, and IMDS.

Example::

    >>> with LocalStack() as stack:
    ...     stack.secrets().list_secrets()
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3

from tests.stack.imds import Identity, ImdsEmulator, role_credentials
from tests.stack.motoserver import ADMIN_ENV, MotoServer
from tests.stack.proxy import FaultProxy

NODE_ACTIONS = [
    "secretsmanager:GetSecretValue",
    "secretsmanager:BatchGetSecretValue",
    "secretsmanager:DeleteSecret",
    "secretsmanager:DescribeSecret",
    "ssm:GetParameters",
    "ssm:DeleteParameters",
]
EC2_TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "ec2.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}


class LocalStack:
    """moto server, a fault proxy in front of it, and a strict IMDS emulator serving an
    assumed instance role's credentials."""

    def __init__(
        self,
        region: str = "us-east-1",
        log_dir: Path | None = None,
        *,
        moto_host: str = "127.0.0.1",
        moto_port: int = 0,
        imds_host: str = "127.0.0.1",
        imds_port: int = 0,
        instance_id: str | None = None,
    ):
        self.region = region
        self.moto = MotoServer(
            host=moto_host, port=moto_port, log=log_dir / "moto.log" if log_dir else None
        )
        self.identity = Identity(region=region, availability_zone=f"{region}a")
        if instance_id is not None:
            self.identity.instance_id = instance_id
        self.imds = ImdsEmulator(self.identity, self._credentials, host=imds_host, port=imds_port)
        self.proxy = FaultProxy(self.moto.url)
        self.admin_keys = dict(ADMIN_ENV)
        self.node_credentials: dict[str, str] = {}

    def _credentials(self) -> dict[str, str]:
        return self.node_credentials

    def client(self, service: str, **keys: str) -> Any:
        return boto3.client(
            service,
            region_name=self.region,
            endpoint_url=self.moto.url,
            aws_access_key_id=keys.get("AWS_ACCESS_KEY_ID", self.admin_keys["AWS_ACCESS_KEY_ID"]),
            aws_secret_access_key=keys.get(
                "AWS_SECRET_ACCESS_KEY", self.admin_keys["AWS_SECRET_ACCESS_KEY"]
            ),
            aws_session_token=keys.get("AWS_SESSION_TOKEN"),
        )

    def secrets(self) -> Any:
        return self.client("secretsmanager")

    def provision(self, node_actions: list[str] | None = None) -> None:
        """Create the controller user and the instance role, and put the role's keys in IMDS."""
        iam = self.client("iam", **ADMIN_ENV)
        iam.create_user(UserName="sealboot-controller")
        iam.put_user_policy(
            UserName="sealboot-controller",
            PolicyName="admin",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
                }
            ),
        )
        key = iam.create_access_key(UserName="sealboot-controller")["AccessKey"]
        self.admin_keys = {
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        }
        role = iam.create_role(
            RoleName=self.identity.role_name, AssumeRolePolicyDocument=json.dumps(EC2_TRUST)
        )["Role"]
        iam.put_role_policy(
            RoleName=self.identity.role_name,
            PolicyName="sealboot-node",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Action": NODE_ACTIONS if node_actions is None else node_actions,
                            "Resource": "*",
                        }
                    ],
                }
            ),
        )
        creds = self.client("sts").assume_role(
            RoleArn=role["Arn"], RoleSessionName=self.identity.instance_id
        )["Credentials"]
        self.node_credentials = role_credentials(creds)

    def reset(self, node_actions: list[str] | None = None) -> None:
        """Back to an empty account with IAM enforcement off, then provision again."""
        self.moto.enforce_iam(float("inf"))
        self.moto.reset()
        self.imds.clear()
        self.proxy.clear()
        self.admin_keys = dict(ADMIN_ENV)
        self.provision(node_actions)

    def start(self) -> LocalStack:
        self.moto.start()
        self.imds.start()
        self.proxy.start()
        self.provision()
        return self

    def stop(self) -> None:
        self.proxy.stop()
        self.imds.stop()
        self.moto.stop()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
