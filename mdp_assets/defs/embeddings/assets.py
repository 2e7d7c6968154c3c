"""Level 7, embeddings: a deterministic representation of profiles (PCA fitted per plate)."""

import dagster as dg
import pandas as pd

from mdp_assets.config import StepSettings
from mdp_assets.defs.plates.partitions import names_plate_and_level, plates_partitions
from mdp_assets.defs.pictures import figure_metadata
from mdp_assets.plates.registry import PERTURBATION
from mdp_assets.science.embeddings import H5AD_FILE, pca_embedding, pca_embedding_parquet, write_h5ad
from mdp_assets.science.plots import embedding_scatter
from mdp_assets.storage.partitions import TABLE_FILE, StoredPartition, parquet_output
from mdp_assets.storage.resource import MdpStorage

METHOD = "PCA per plate (covariance eigenvectors, NaN -> 0, sign fixed by the largest loading)"


def _metadata(ratios: list[float]) -> dict[str, object]:
    metadata: dict[str, object] = {"components": len(ratios), "explained_variance_ratio": [round(r, 6) for r in ratios],
                                   "method": METHOD}
    if not ratios:
        metadata["no_components_because"] = ("fewer than two rows, or no feature survived feature selection: "
                                             "the profiles carry their Metadata_ columns only")
    return metadata


@dg.asset(
    partitions_def=plates_partitions,
    group_name="embeddings",
    kinds={"parquet", "pyarrow", "anndata"},
    description="Single-cell embeddings: the first principal components (8 by default) of the plate's "
    f"single-cell profiles (Embedding_PC1..), deterministic; Metadata_ columns carried. Also as AnnData "
    f"(`{H5AD_FILE}`: X the embedding, obs the Metadata_ columns) for scanpy and the scverse tools.",
)
@names_plate_and_level
def single_cell_embeddings(
    single_cell_profiles: StoredPartition, settings: StepSettings, storage: MdpStorage
) -> dg.Output:
    # Streamed from the stored Parquet a batch of rows at a time: a full plate of cells never sits in memory.
    with storage.staging_dir("single_cell_embeddings") as staged:
        ratios = pca_embedding_parquet(single_cell_profiles.path(TABLE_FILE), staged / TABLE_FILE,
                                       settings.embeddings.components)
        cells, components = write_h5ad(staged / TABLE_FILE, staged / H5AD_FILE, {
            "plate": single_cell_profiles.partition, "method": METHOD,
            "pca": {"variance_ratio": ratios}})  # where scanpy keeps PCA's explained variance
        anndata = f"{H5AD_FILE}: {cells} cells x {components} components"
        return parquet_output(staged, {**_metadata(ratios), "anndata": anndata})


@dg.asset(
    partitions_def=plates_partitions,
    group_name="embeddings",
    kinds={"parquet", "numpy"},
    description="Well embeddings: the first principal components (8 by default) of the plate's well profiles.",
)
@names_plate_and_level
def well_embeddings(context: dg.AssetExecutionContext, well_profiles: pd.DataFrame, settings: StepSettings,
                    storage: MdpStorage) -> dg.Output:
    embedding = pca_embedding(well_profiles, settings.embeddings.components)
    metadata = _metadata(embedding.explained_variance_ratio)
    if {"Embedding_PC1", "Embedding_PC2", PERTURBATION} <= set(embedding.table.columns):
        png = embedding_scatter(embedding.table, PERTURBATION, f"{context.partition_key}: wells on PC1 and PC2")
        metadata["wells_by_treatment"] = figure_metadata(png, "wells on their first two principal components")
    return storage.table_output("well_embeddings", embedding.table, metadata)
