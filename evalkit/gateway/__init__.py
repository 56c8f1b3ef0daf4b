"""The per-job model gateway: OpenAI- and Anthropic-compatible endpoints in front of the job's upstreams.

Agents get a per-trial key, TCP URLs and a Unix socket of their own (`await Gateway.open_trial(...)`); every
call they make is appended to their trial's `litellm-trajectory.jsonl`, and its usage is summed into the
trial's `ModelUsage`. LiteLLM is imported only when a gateway starts, so importing this package stays cheap.
"""

from evalkit.gateway.config import DeploymentConfig, LLMApiConfig
from evalkit.gateway.gateway import Gateway
from evalkit.gateway.trials import ModelUsage, TrialAccess

__all__ = ["DeploymentConfig", "Gateway", "LLMApiConfig", "ModelUsage", "TrialAccess"]
