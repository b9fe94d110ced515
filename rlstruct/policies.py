"""Stable-Baselines3 glue: actor-critic policies whose hidden layers are structured.

Importing this module registers ``"StructuredMlpPolicy"`` with PPO (and TRPO when sb3-contrib is
installed), so::

    PPO("StructuredMlpPolicy", env, policy_kwargs=dict(structure="kama"))

works, and a saved model loads back with plain ``PPO.load(path)``: the structure and its options
are constructor parameters that SB3 stores in the zip file.

The action and value heads stay dense ``nn.Linear`` layers (as in the KAMA and Toeplitz papers'
policies); the hidden layers of the actor and of the critic are structured, each side with its
own structure, sizes and activation.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Type, Union

import torch
from stable_baselines3 import PPO
from stable_baselines3.common.distributions import CategoricalDistribution, DiagGaussianDistribution
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn

from rlstruct import diag_gaussian
from rlstruct.errors import RLStructError
from rlstruct.layers import StructuredLinear, make_layer
from rlstruct.layers.batched import built_weights, linear_with

ACTIVATIONS: Dict[str, Type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
    "identity": nn.Identity,
}

ActivationSpec = Union[str, Type[nn.Module]]


def resolve_activation(spec: ActivationSpec) -> Type[nn.Module]:
    """An activation class from a class or a name such as ``"tanh"``."""
    if isinstance(spec, str):
        try:
            return ACTIVATIONS[spec.lower()]
        except KeyError:
            raise RLStructError(
                f"unknown activation {spec!r}; choose one of: {', '.join(ACTIVATIONS)}"
            ) from None
    if isinstance(spec, type) and issubclass(spec, nn.Module):
        return spec
    raise RLStructError(f"activation must be a name or an nn.Module class, got {spec!r}")


def build_structured_mlp(
    in_features: int,
    hidden_sizes: List[int],
    structure: str,
    activation: Type[nn.Module],
    layer_kwargs: Optional[Dict[str, Any]] = None,
) -> nn.Sequential:
    """``[structured layer, activation] * len(hidden_sizes)`` as an ``nn.Sequential``."""
    layers: List[nn.Module] = []
    last = in_features
    for size in hidden_sizes:
        layers.append(make_layer(structure, last, int(size), bias=True, **(layer_kwargs or {})))
        layers.append(activation())
        last = int(size)
    return nn.Sequential(*layers)


class StructuredMlpExtractor(nn.Module):
    """SB3's ``MlpExtractor`` contract with structured hidden layers.

    Shapes: ``forward`` maps features ``(batch, feature_dim)`` to
    ``(latent_pi (batch, latent_dim_pi), latent_vf (batch, latent_dim_vf))``.
    """

    def __init__(
        self,
        feature_dim: int,
        pi_sizes: List[int],
        vf_sizes: List[int],
        structure: str,
        critic_structure: str,
        activation: Type[nn.Module],
        critic_activation: Type[nn.Module],
        layer_kwargs: Optional[Dict[str, Any]] = None,
        critic_layer_kwargs: Optional[Dict[str, Any]] = None,
    ) -> None:
        super().__init__()
        self.policy_net = build_structured_mlp(
            feature_dim, pi_sizes, structure, activation, layer_kwargs
        )
        self.value_net = build_structured_mlp(
            feature_dim, vf_sizes, critic_structure, critic_activation, critic_layer_kwargs
        )
        self.latent_dim_pi = int(pi_sizes[-1]) if pi_sizes else feature_dim
        self.latent_dim_vf = int(vf_sizes[-1]) if vf_sizes else feature_dim

    def forward(self, features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        latent_pi, latent_vf = self._run((self.policy_net, self.value_net), features)
        return latent_pi, latent_vf

    def forward_actor(self, features: torch.Tensor) -> torch.Tensor:
        """Shape: ``(batch, features_dim) -> (batch, latent_dim_pi)``."""
        return self._run((self.policy_net,), features)[0]

    def forward_critic(self, features: torch.Tensor) -> torch.Tensor:
        """Shape: ``(batch, features_dim) -> (batch, latent_dim_vf)``."""
        return self._run((self.value_net,), features)[0]

    @staticmethod
    def _run(nets: Tuple[nn.Sequential, ...], features: torch.Tensor) -> List[torch.Tensor]:
        """Each net on ``features``. With gradients on, every structured layer that would build
        its ``W`` gets it from one shared autograd node first (one Python node per minibatch
        instead of one per layer, forward and backward: ``rlstruct.layers.batched``); the other
        layers run as usual. Without gradients (rollouts) see :func:`_run_cached`."""
        if not torch.is_grad_enabled():
            return [_run_cached(net, features) for net in nets]
        if features.dim() != 2:
            return [net(features) for net in nets]
        layers = [m for net in nets for m in net if isinstance(m, StructuredLinear)]
        weights = dict(zip(map(id, layers), built_weights(layers, features)))
        outs = []
        for net in nets:
            x = features
            for module in net:
                weight = weights.get(id(module))
                x = module(x) if weight is None else linear_with(module, x, weight)
            outs.append(x)
        return outs


def _run_cached(net: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``net(x)`` without gradients, the structured layers multiplying by their cached ``W``
    directly: a rollout step then skips each layer's module call and path checks, which at RL
    widths cost about as much as the matmul itself."""
    for module in net:
        if isinstance(module, StructuredLinear) and module.infers_dense:
            x = module.forward_cached(x)
        else:
            x = module(x)
    return x


def _split_net_arch(net_arch: Any) -> Tuple[List[int], List[int]]:
    if net_arch is None:
        return [64, 64], [64, 64]
    if isinstance(net_arch, dict):
        unknown = set(net_arch) - {"pi", "vf"}
        if unknown:
            raise RLStructError(
                f"net_arch has unknown keys {sorted(unknown)}; use dict(pi=[...], vf=[...])"
            )
        return list(net_arch.get("pi", [])), list(net_arch.get("vf", []))
    return list(net_arch), list(net_arch)


class StructuredActorCriticPolicy(ActorCriticPolicy):
    """An ``ActorCriticPolicy`` whose hidden layers are structured matrices.

    Args:
        structure: registered structure of the actor's hidden layers (``"dense"``, ``"kama"``,
            ``"toeplitz"``, ... see :func:`rlstruct.layers.available_structures`).
        critic_structure: structure of the critic's hidden layers (default: ``structure``).
        layer_kwargs: options for the actor's layers (e.g. ``dict(layout="random")``).
        critic_layer_kwargs: options for the critic's layers (default: ``layer_kwargs`` when the
            critic has the same structure, else none).
        critic_activation_fn: activation of the critic (default: ``activation_fn``).
        net_arch: ``dict(pi=[...], vf=[...])`` or one list for both (SB3's convention);
            default ``dict(pi=[64, 64], vf=[64, 64])``.
        activation_fn: activation of the actor, a class or a name (``"tanh"``, ``"relu"``...).
        **kwargs: everything else ``ActorCriticPolicy`` accepts.

    Without ``optimizer_kwargs`` the default Adam (SB3's ``eps=1e-5``) runs fused
    (:meth:`default_optimizer_kwargs`); the saved model stores that choice.

    With ``ortho_init`` (SB3's default) a dense layer is orthogonally initialized exactly as in
    ``MlpPolicy``; a structured layer gets its family's counterpart
    (:meth:`StructuredLinear.init_like_orthogonal`).
    """

    def __init__(
        self,
        *args: Any,
        structure: str = "dense",
        critic_structure: Optional[str] = None,
        layer_kwargs: Optional[Dict[str, Any]] = None,
        critic_layer_kwargs: Optional[Dict[str, Any]] = None,
        critic_activation_fn: Optional[ActivationSpec] = None,
        activation_fn: ActivationSpec = nn.Tanh,
        **kwargs: Any,
    ) -> None:
        self.structure = structure
        self.critic_structure = critic_structure or structure
        self.layer_kwargs = dict(layer_kwargs or {})
        if critic_layer_kwargs is None and self.critic_structure == structure:
            critic_layer_kwargs = self.layer_kwargs
        self.critic_layer_kwargs = dict(critic_layer_kwargs or {})
        activation = resolve_activation(activation_fn)
        self.critic_activation_fn = resolve_activation(critic_activation_fn or activation)
        if len(args) <= 3:  # SB3 passes (observation_space, action_space, lr_schedule)
            kwargs = self.default_optimizer_kwargs(kwargs)
        super().__init__(*args, activation_fn=activation, **kwargs)

    @staticmethod
    def default_optimizer_kwargs(kwargs: Dict[str, Any]) -> Dict[str, Any]:
        """``kwargs`` with SB3's default Adam made ``fused=True`` when the caller chose nothing.

        SB3 builds ``optimizer_class(self.parameters(), lr=..., **optimizer_kwargs)`` with Adam and
        ``optimizer_kwargs={"eps": 1e-5}`` by default: the for-loop Adam on CPU, which costs a few
        dispatched ops per parameter tensor and step (structured layers have 2 to 4 tensors). The
        fused kernel gives the same update to float32 rounding at a fraction of the cost
        (``results/ppo_throughput.md``, "Optimizer step"). An explicit ``optimizer_class`` other
        than Adam or any ``optimizer_kwargs`` (even ``{}``) is the caller's choice and is kept.
        """
        if kwargs.get("optimizer_kwargs") is not None:
            return kwargs
        if kwargs.get("optimizer_class", torch.optim.Adam) is not torch.optim.Adam:
            return kwargs
        return dict(kwargs, optimizer_kwargs=dict(eps=1e-5, fused=True))

    def _build(self, lr_schedule) -> None:
        super()._build(lr_schedule)
        if any(group.get("fused") for group in self.optimizer.param_groups):
            # Fused Adam updates parameters without bumping their version counters, which
            # the layers' inference cache (and autograd's saved-tensor check) rely on.
            self.optimizer.register_step_post_hook(self._bump_stepped_versions)

    @staticmethod
    def _bump_stepped_versions(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """Step post-hook of a fused optimizer: mark the parameters it stepped as modified."""
        torch.autograd.graph.increment_version(
            [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        )

    def _build_mlp_extractor(self) -> None:
        pi_sizes, vf_sizes = _split_net_arch(self.net_arch)
        self.mlp_extractor = StructuredMlpExtractor(
            self.features_dim,
            pi_sizes,
            vf_sizes,
            self.structure,
            self.critic_structure,
            self.activation_fn,
            self.critic_activation_fn,
            self.layer_kwargs,
            self.critic_layer_kwargs,
        ).to(self.device)

    @staticmethod
    def init_weights(module: nn.Module, gain: float = 1) -> None:
        """SB3's orthogonal init, routed to :meth:`StructuredLinear.init_like_orthogonal` for our layers."""
        if isinstance(module, StructuredLinear):
            module.init_like_orthogonal(gain)
        else:
            ActorCriticPolicy.init_weights(module, gain)

    def _plain_gaussian(self) -> bool:
        """Whether actions come from SB3's diagonal Gaussian (no gSDE): :mod:`rlstruct.diag_gaussian`."""
        return isinstance(self.action_dist, DiagGaussianDistribution) and not self.use_sde

    def _latents(self, obs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(latent_pi, latent_vf)`` as SB3's ``forward`` and ``evaluate_actions`` compute them."""
        features = self.extract_features(obs)
        if self.share_features_extractor:
            return self.mlp_extractor(features)
        pi_features, vf_features = features
        return self.mlp_extractor.forward_actor(pi_features), self.mlp_extractor.forward_critic(vf_features)

    def forward(self, obs: torch.Tensor, deterministic: bool = False) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """SB3's ``forward`` (actions, values, log-probabilities: ``(batch, *act_shape)``,
        ``(batch, 1)``, ``(batch,)``); a diagonal Gaussian head samples and scores without a
        ``torch.distributions`` object (bitwise the same tensors and random draws)."""
        if not self._plain_gaussian():
            return super().forward(obs, deterministic)
        latent_pi, latent_vf = self._latents(obs)
        values = self.value_net(latent_vf)
        mean = self.action_net(latent_pi)
        std = diag_gaussian.action_std(mean, self.log_std)
        actions = mean if deterministic else diag_gaussian.sample(mean, std)
        log_prob = diag_gaussian.log_prob(actions, mean, std)
        return actions.reshape((-1, *self.action_space.shape)), values, log_prob

    def evaluate_actions(self, obs: torch.Tensor, actions: torch.Tensor
                         ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """SB3's ``evaluate_actions`` (values ``(batch, 1)``, log-probabilities and entropy
        ``(batch,)``), the diagonal Gaussian head as in :meth:`forward`: same values and gradients."""
        if not self._plain_gaussian():
            return super().evaluate_actions(obs, actions)
        latent_pi, latent_vf = self._latents(obs)
        mean = self.action_net(latent_pi)
        std = diag_gaussian.action_std(mean, self.log_std)
        log_prob = diag_gaussian.log_prob(actions, mean, std)
        values = self.value_net(latent_vf)
        return values, log_prob, diag_gaussian.entropy(std)

    def _predict(self, observation: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """SB3's ``_predict``, with the deterministic action computed without a distribution object.

        Shape: ``(batch, obs_dim) -> (batch, act_dim)`` (Box: the Gaussian's mean; Discrete: the
        argmax of the logits), exactly what ``get_distribution(obs).get_actions(True)`` returns.
        Building the distribution costs more than the whole actor at RL widths; stochastic
        actions, gSDE and other distributions take SB3's path.
        """
        if not deterministic or self.use_sde or not isinstance(
            self.action_dist, (DiagGaussianDistribution, CategoricalDistribution)
        ):
            return super()._predict(observation, deterministic)
        features = super().extract_features(observation, self.pi_features_extractor)
        mean_actions = self.action_net(self.mlp_extractor.forward_actor(features))
        if isinstance(self.action_dist, CategoricalDistribution):
            return torch.argmax(mean_actions, dim=1)
        return mean_actions

    def _get_constructor_parameters(self) -> Dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            structure=self.structure,
            critic_structure=self.critic_structure,
            layer_kwargs=self.layer_kwargs,
            critic_layer_kwargs=self.critic_layer_kwargs,
            critic_activation_fn=self.critic_activation_fn,
        )
        return data

    # ------------------------------------------------------------------------------------------
    def parameter_counts(self) -> Dict[str, int]:
        """Learned parameters of the actor, the critic and in total, with dense equivalents.

        ``actor`` counts the actor's hidden layers, the action head and ``log_std``; ``critic``
        the critic's hidden layers and value head. ``dense_*`` is what the same network with
        ``nn.Linear`` hidden layers would learn.
        """

        def count(modules: List[nn.Module]) -> int:
            return sum(
                p.numel() for m in modules for p in m.parameters() if p.requires_grad
            )

        def dense_equivalent(net: nn.Module) -> int:
            return sum(
                m.dense_num_parameters() if isinstance(m, StructuredLinear)
                else sum(p.numel() for p in m.parameters(recurse=False) if p.requires_grad)
                for m in net.modules()
            )

        actor_extra = [self.action_net]
        log_std = self.log_std.numel() if isinstance(getattr(self, "log_std", None), nn.Parameter) else 0
        actor = count([self.mlp_extractor.policy_net] + actor_extra) + log_std
        critic = count([self.mlp_extractor.value_net, self.value_net])
        dense_actor = dense_equivalent(self.mlp_extractor.policy_net) + count(actor_extra) + log_std
        dense_critic = dense_equivalent(self.mlp_extractor.value_net) + count([self.value_net])
        return {
            "actor": actor,
            "critic": critic,
            "total": actor + critic,
            "dense_actor": dense_actor,
            "dense_critic": dense_critic,
            "dense_total": dense_actor + dense_critic,
        }


def algo_class(name: str) -> type:
    """The SB3 class that trains (``ppo``, ``trpo``) or carries (``es``, ``distill``) a run's model."""
    if name in ("ppo", "es", "distill"):
        return PPO
    if name == "trpo":
        from sb3_contrib import TRPO

        return TRPO
    raise RLStructError(f"unknown algo {name!r}; choose one of: ppo, trpo, es, distill")


def policy_kwargs_from_config(policy_cfg: Dict[str, Any]) -> Dict[str, Any]:
    """``policy_kwargs`` of :class:`StructuredActorCriticPolicy` from a ``conf/policy`` mapping."""
    hidden = list(policy_cfg.get("hidden") or [])
    critic_hidden = policy_cfg.get("critic_hidden")
    kwargs: Dict[str, Any] = dict(
        structure=policy_cfg["structure"],
        critic_structure=policy_cfg.get("critic_structure"),
        net_arch=dict(pi=hidden, vf=list(critic_hidden) if critic_hidden is not None else hidden),
        activation_fn=policy_cfg.get("activation", "tanh"),
        critic_activation_fn=policy_cfg.get("critic_activation"),
        layer_kwargs=dict(policy_cfg.get("layer_kwargs") or {}),
        critic_layer_kwargs=(
            dict(policy_cfg["critic_layer_kwargs"])
            if policy_cfg.get("critic_layer_kwargs") is not None else None
        ),
    )
    if policy_cfg.get("log_std_init") is not None:
        kwargs["log_std_init"] = float(policy_cfg["log_std_init"])
    if policy_cfg.get("ortho_init") is not None:
        kwargs["ortho_init"] = bool(policy_cfg["ortho_init"])
    return kwargs


def optimizer_policy_kwargs(name: Optional[str], kwargs: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """``optimizer_class``/``optimizer_kwargs`` for the policy (``{}``: the algorithm's Adam)."""
    if not name:
        return {}
    from rlstruct.optim import check_optimizer_kwargs, get_optimizer

    kwargs = dict(kwargs or {})
    check_optimizer_kwargs(name, kwargs)
    return dict(optimizer_class=get_optimizer(name), optimizer_kwargs=kwargs)


POLICY_NAME = "StructuredMlpPolicy"


def register_policy_aliases() -> None:
    """Make ``"StructuredMlpPolicy"`` a policy name for PPO (and sb3-contrib's TRPO)."""
    PPO.policy_aliases[POLICY_NAME] = StructuredActorCriticPolicy
    try:
        from sb3_contrib import TRPO
    except ImportError:  # sb3-contrib is optional for users who only run PPO
        return
    TRPO.policy_aliases[POLICY_NAME] = StructuredActorCriticPolicy


register_policy_aliases()

__all__ = [
    "POLICY_NAME",
    "algo_class",
    "StructuredActorCriticPolicy",
    "StructuredMlpExtractor",
    "optimizer_policy_kwargs",
    "policy_kwargs_from_config",
    "register_policy_aliases",
    "resolve_activation",
]
