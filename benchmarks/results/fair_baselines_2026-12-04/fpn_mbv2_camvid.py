_base_ = '../../configs/camvid/fpn_mbv2_camvid.py'
# mmprune's safe-loading allow-list: torch 2.9 refuses mmengine's HistoryBuffer in load_from otherwise
custom_imports = dict(imports=['mmprune'], allow_failed_imports=False)
