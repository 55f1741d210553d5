"""AWS Secrets Manager: one JSON secret in, one clear line out for every way it can fail.

boto3 is imported here only, so commands that need no secret never pay for it. Endpoints follow
boto3's own settings (AWS_ENDPOINT_URL_SECRETS_MANAGER), which is how the tests reach moto.
"""

from __future__ import annotations

import json

from migrator.env import Env
from migrator.errors import MigratorError
from migrator.limits import secrets_read_timeout
from migrator.targets import AwsOptions

_HINTS = {
    "ResourceNotFoundException": "not found: check the name and the region",
    "AccessDeniedException": "access denied: the role or profile needs secretsmanager:GetSecretValue on it",
    "UnrecognizedClientException": "the AWS credentials are not valid: check the profile or the access keys",
    "InvalidSignatureException": "the AWS credentials are not valid: check the profile or the access keys",
    "ExpiredTokenException": "the AWS session has expired: log in again (aws sso login)",
    "DecryptionFailure": "cannot be decrypted: the role needs kms:Decrypt on its key",
}


def _client_config(read_timeout: float):
    """Bounded network waits: a Secrets Manager endpoint that stops answering fails in seconds, not never."""
    from botocore.config import Config

    return Config(connect_timeout=5, read_timeout=read_timeout, retries={"max_attempts": 2, "mode": "standard"})


def profile_and_region(aws: AwsOptions, env: Env) -> tuple[str | None, str | None]:
    """The AWS profile and region asked for (None: boto3's own default chain decides)."""
    profile = aws.profile or env.value("AWS_PROFILE")
    return profile, aws.region or env.value("AWS_REGION") or env.value("AWS_DEFAULT_REGION")


def fetch_json(name: str, aws: AwsOptions, env: Env) -> dict:
    """The secret's JSON object. Raises MigratorError naming the secret and what to do."""
    import boto3
    import botocore.exceptions as bx

    profile, region = profile_and_region(aws, env)
    read_timeout = secrets_read_timeout(env)
    where = f"AWS secret {name}" + (f" (profile {profile})" if profile else "")
    try:
        session = boto3.Session(profile_name=profile, region_name=region)
        client = session.client("secretsmanager", config=_client_config(read_timeout))
        response = client.get_secret_value(SecretId=name)
    except bx.ProfileNotFound:
        raise MigratorError(f"{where}: AWS profile {profile!r} not found in ~/.aws/config; fix --profile")
    except bx.NoRegionError:
        raise MigratorError(f"{where}: no AWS region; pass --region or set AWS_REGION")
    except (bx.NoCredentialsError, bx.PartialCredentialsError):
        raise MigratorError(f"{where}: no AWS credentials; pass --profile or set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
    except bx.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        hint = _HINTS.get(code, exc.response.get("Error", {}).get("Message", code))
        raise MigratorError(f"{where}: {hint}")
    except (bx.ConnectTimeoutError, bx.ReadTimeoutError) as exc:
        raise MigratorError(f"{where}: Secrets Manager did not answer in time ({exc}; {read_timeout:g} s a try, "
                            "SECRETS_READ_TIMEOUT); check the network path (k8s/networkpolicy-secrets-manager.yaml) "
                            "and the region")
    except bx.EndpointConnectionError as exc:
        raise MigratorError(f"{where}: cannot reach Secrets Manager ({exc}); check the network and the region")
    except bx.BotoCoreError as exc:
        raise MigratorError(f"{where}: {exc}")

    text = response.get("SecretString")
    if text is None:
        raise MigratorError(f"{where} holds binary data, not a JSON string; store the settings as JSON key/values")
    try:
        data = json.loads(text)
    except ValueError:
        raise MigratorError(f"{where} is not JSON; store the settings as JSON key/values")
    if not isinstance(data, dict):
        raise MigratorError(f"{where} is JSON but not an object of key/values")
    return data
