"""Level 7, embeddings: a deterministic representation of profiles (PCA fitted per plate)."""


import dagster as dg
import pandas as pd

from mdp_assets.defs.plates.partitions import plates_partitions
from mdp_assets.lib.embeddings import pca_embedding
from mdp_assets.lib.versions import step_version

N_COMPONENTS = 8


def _embed(profiles: pd.DataFrame) -> dg.Output[pd.DataFrame]:
    embedding = pca_embedding(profiles, N_COMPONENTS)
    return dg.Output(
        embedding.table,
        metadata={
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
    code_version=step_version("single_cell_embeddings", {"method": "pca", "n_components": N_COMPONENTS}),
    description=f"Single-cell embeddings: the first {N_COMPONENTS} principal components of the plate's "
    "single-cell profiles (Embedding_PC1..), deterministic; Metadata_ columns carried.",
)
def single_cell_embeddings(single_cell_profiles: pd.DataFrame) -> dg.Output[pd.DataFrame]:
    return _embed(single_cell_profiles)


@dg.asset(
    partitions_def=plates_partitions,
    group_name="embeddings",
    kinds={"parquet", "numpy"},
    code_version=step_version("well_embeddings", {"method": "pca", "n_components": N_COMPONENTS}),
    description=f"Well embeddings: the first {N_COMPONENTS} principal components of the plate's well profiles.",
)
def well_embeddings(well_profiles: pd.DataFrame) -> dg.Output[pd.DataFrame]:
    return _embed(well_profiles)
