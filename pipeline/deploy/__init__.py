"""What a trained model costs where it is deployed (issue 30): the ONNX graph a runtime loads (`graph`), its
int8 variant (`quantize`), its latency under ONNX Runtime (`latency`), the gallery index a retrieval service
keeps (`index`), and its FLOPs (`flops`). The export stages (`pipeline.wiring.export`) measure every trained
model with them; the report sets each student beside its teacher.
"""
