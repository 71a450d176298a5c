_base_ = '../../configs/bccd/retinanet_mbv2_fpn_bccd.py'
# mmprune's safe-loading allow-list: torch 2.9 refuses mmengine's HistoryBuffer in load_from otherwise
custom_imports = dict(imports=['mmprune'], allow_failed_imports=False)
