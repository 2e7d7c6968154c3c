"""Level 7, embeddings: a deterministic representation of profiles (PCA fitted per plate)."""


import dagster as dg
import pandas as pd

from mdp_assets.defs.plates.partitions import plates_partitions
from mdp_assets.lib.embeddings import pca_embedding
from mdp_assets.defs.parameters import PipelineParameters
from mdp_assets.defs.storage.io_manager import table_output
from mdp_assets.defs.storage.resources import MdpStorage


def _embed(storage: MdpStorage, label: str, profiles: pd.DataFrame, n_components: int) -> dg.Output:
    embedding = pca_embedding(profiles, n_components)
    return table_output(
        storage,
        label,
        embedding.table,
        {
            "rows": len(embedding.table),
            "components": len(embedding.explained_variance_ratio),
            "explained_variance_ratio": [round(r, 6) for r in embedding.explained_variance_ratio],
            "method": "PCA per plate (SVD, NaN -> 0, sign fixed by the largest loading)",
        },
    )


@dg.asset(
    partitions_def=plates_partitions,
    group_name="embeddings",
    kinds={"parquet", "numpy"},
    description="Single-cell embeddings: the first principal components (8 by default) of the plate's "
    "single-cell profiles (Embedding_PC1..), deterministic; Metadata_ columns carried.",
)
def single_cell_embeddings(
    single_cell_profiles: pd.DataFrame, parameters: PipelineParameters, storage: MdpStorage
) -> dg.Output:
    return _embed(storage, "single_cell_embeddings", single_cell_profiles, parameters.embedding_components)


@dg.asset(
    partitions_def=plates_partitions,
    group_name="embeddings",
    kinds={"parquet", "numpy"},
    description="Well embeddings: the first principal components (8 by default) of the plate's well profiles.",
)
def well_embeddings(well_profiles: pd.DataFrame, parameters: PipelineParameters, storage: MdpStorage) -> dg.Output:
    return _embed(storage, "well_embeddings", well_profiles, parameters.embedding_components)
