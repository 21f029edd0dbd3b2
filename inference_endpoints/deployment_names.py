"""The Prefect deployments the product submits, as `flow/deployment`: named for what they run.

`deployments/prefect.yaml` declares them under the same names (a test holds the two together);
the serve deployments are named for their work pool (`serve-endpoint/<pool>`).
"""

CREATE = "create-endpoint/create"
STOP = "stop-endpoint/stop-or-remove"
RECONCILE = "reconcile-endpoints/self-healing"
ON_FINETUNE = "on-finetune-completed/on-finetune-event"
COLLECT_GARBAGE = "collect-checkpoint-garbage/reclaim-bytes"
ALL = (CREATE, STOP, RECONCILE, ON_FINETUNE, COLLECT_GARBAGE)
# What `endpoints up` deletes when it finds them: earlier versions named each of these `default`.
RETIRED = tuple(f"{name.split('/')[0]}/default" for name in ALL)
