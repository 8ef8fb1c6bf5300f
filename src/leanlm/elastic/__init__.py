"""ERNIE 5.0 elastic MoE training (arXiv 2602.04705): one run, a family of deployable sub-models.

Importing this package registers ``ElasticMoeConfig`` / ``ElasticMoeForCausalLM`` with transformers' Auto classes.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from leanlm.elastic.balance import BiasSchedule, normalized_entropy, update_router_biases
from leanlm.elastic.config import ElasticMoeConfig
from leanlm.elastic.elastic import ElasticConfig, ElasticSampler, even_layers
from leanlm.elastic.extract import extract, plan_subnet
from leanlm.elastic.model import ElasticMoe, ElasticMoeForCausalLM
from leanlm.elastic.subnet import SubNet

AutoConfig.register(ElasticMoeConfig.model_type, ElasticMoeConfig, exist_ok=True)
AutoModelForCausalLM.register(ElasticMoeConfig, ElasticMoeForCausalLM, exist_ok=True)

__all__ = [
    "BiasSchedule", "ElasticConfig", "ElasticMoe", "ElasticMoeConfig", "ElasticMoeForCausalLM", "ElasticSampler",
    "SubNet", "even_layers", "extract", "normalized_entropy", "plan_subnet", "update_router_biases",
]
