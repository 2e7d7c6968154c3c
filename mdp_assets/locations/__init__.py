"""Code locations for the service deployments in deploy/: one module per way of running steps.

    service     every step in the run worker (docker compose, deploy/local-stack.sh)
    kubernetes  every step in its own pod (k8s_job_executor), each CellProfiler group a pod (PipesK8sClient)
    ecs         runs as ECS tasks (EcsRunLauncher), each CellProfiler group a task (PipesECSClient)

Each is served with `dagster api grpc -m mdp_assets.locations.<name>`; settings come from the environment
when runs start (deploy/README.md lists every variable).
"""
