"""Run coSMicQC 1.1.2 (in its own environment) on real NF1 cells; record which cells each condition flags."""
import sqlite3, json, pandas as pd, cosmicqc
REAL='/work/shared/realdata/'
DB=REAL+'cytotable-cp-outputs/tests/data/cellprofiler/NF1_SchwannCell_data/all_cellprofiler.sqlite'
CUSTOM={"bright_small_nuclei": {"Nuclei_Intensity_MeanIntensity_DAPI": 1.5, "Nuclei_AreaShape_Area": -0.5},
        "elongated_nuclei_loose": {"Nuclei_AreaShape_Eccentricity": 1.5},
        "dim_gfp_nuclei": {"Nuclei_Intensity_MeanIntensity_GFP": -1}}
def flagged(res, ids):
    return {c.removeprefix('Metadata_cqc_').removesuffix('_is_outlier'): sorted(ids(res[res[c]])) for c in res.columns if c.startswith('Metadata_cqc_') and c.endswith('_is_outlier')}
nuc=pd.read_sql('select * from Per_Nuclei', sqlite3.connect(DB))
ids=lambda f: [[int(a),int(b)] for a,b in zip(f.ImageNumber,f.Nuclei_Number_Object_Number)]
default=flagged(cosmicqc.label_outliers(nuc), ids)
custom=flagged(cosmicqc.label_outliers(nuc, feature_thresholds=CUSTOM), ids)
p=pd.read_parquet(REAL+'nf1-plate2-cytodataframe/NF1_cellpainting_data_shrunken/Plate_2_with_image_data_shrunken.parquet')
pids=lambda f: [int(i) for i in f.index]
plate2=flagged(cosmicqc.label_outliers(p), pids)
out={'tool': f'coSMicQC {cosmicqc.__version__}', 'made_by': 'cosmicqc.label_outliers(cells) and label_outliers(cells, feature_thresholds=custom_conditions)',
 'nf1_schwann_nuclei': {'source': 'cytotable-cp-outputs/tests/data/cellprofiler/NF1_SchwannCell_data/all_cellprofiler.sqlite, table Per_Nuclei', 'cells': len(nuc), 'cell_id': ['ImageNumber','Nuclei_Number_Object_Number'],
   'default_conditions': default, 'custom_conditions': CUSTOM, 'custom': custom},
 'nf1_plate2_cells': {'source': 'nf1-plate2-cytodataframe/NF1_cellpainting_data_shrunken/Plate_2_with_image_data_shrunken.parquet', 'cells': len(p), 'cell_id': 'row position', 'default_conditions': plate2}}
json.dump(out, open('/tmp/q/cosmicqc_nf1_reference.json','w'), indent=1)
print({k:{c:len(v) for c,v in d.items()} for k,d in [('default',default),('custom',custom),('plate2',plate2)]})
