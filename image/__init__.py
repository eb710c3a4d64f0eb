"""The image build driver: mkosi's tree → initrd → squashfs + verity → UKI → ESP → GPT disk.

`image.build.build()` is what `kubermesh build` runs; each module is one step.
"""
