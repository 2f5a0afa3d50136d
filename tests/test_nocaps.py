"""NoCaps val reader (`aape_jax.data.nocaps`)."""

import json
import re

import numpy as np
import PIL.Image
import pytest

from aape_jax.data import nocaps


def _image_entry(image_id, domain, name=None):
    name = name or f"{image_id:04x}ea2087020901.jpg"
    return {"id": image_id, "open_images_id": name[:-4], "height": 8, "width": 8,
            "coco_url": f"https://s3.amazonaws.com/nocaps/val/{name}", "file_name": name, "license": 0,
            "date_captured": "2018-11-06 11:04:33", "domain": domain}


def _nocaps_file(tmp_path, images=None, annotations=None, skip_files=()):
    if images is None:
        images = [_image_entry(0, "in-domain"), _image_entry(1, "near-domain"), _image_entry(2, "out-domain")]
    if annotations is None:
        annotations = [  # interleaved, as a file may hold them: grouped per image in file order
            {"image_id": 1, "id": 0, "caption": "A dog on a beach."},
            {"image_id": 0, "id": 1, "caption": " A baby is standing in front of a house. "},
            {"image_id": 1, "id": 2, "caption": "A brown dog running."},
            {"image_id": 2, "id": 3, "caption": "An accordion on a table."},
            {"image_id": 0, "id": 4, "caption": ""},
            {"image_id": 0, "id": 5, "caption": "A child outside."},
        ]
    root = tmp_path / "validation"
    root.mkdir(exist_ok=True)
    for image in images:
        if isinstance(image, dict) and image.get("file_name") not in skip_files:
            PIL.Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / image["file_name"], format="JPEG")
    path = tmp_path / "nocaps_val_4500_captions.json"
    path.write_text(json.dumps({"licenses": [], "info": {"version": "0.1"}, "images": images,
                                "annotations": annotations}))
    return path, root


def test_read_nocaps_groups_captions_per_image_with_its_domain(tmp_path):
    path, root = _nocaps_file(tmp_path)
    out = nocaps.read_nocaps(path, root)
    assert [im.image_id for im in out] == [0, 1, 2]
    assert [im.domain for im in out] == list(nocaps.DOMAINS)
    first = out[0].captioned
    assert first.key == "0000ea2087020901.jpg"
    assert first.image == str(root / "0000ea2087020901.jpg")
    assert first.captions == ("A baby is standing in front of a house.", "A child outside.")  # stripped, empty dropped
    assert out[1].captioned.captions == ("A dog on a beach.", "A brown dog running.")
    assert out[2].captioned.captions == ("An accordion on a table.",)
    assert nocaps.DOMAINS == ("in-domain", "near-domain", "out-domain")


def test_images_without_captions_are_listed(tmp_path):
    images = [_image_entry(i, "near-domain") for i in range(14)]
    annotations = [{"image_id": 0, "id": 0, "caption": "A cat."}, {"image_id": 1, "id": 1, "caption": "  "}]
    path, root = _nocaps_file(tmp_path, images=images, annotations=annotations)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": 13 image\\(s\\) without any caption") as e:
        nocaps.read_nocaps(path, root)
    message = str(e.value)
    assert "1 (0001ea2087020901.jpg)" in message and "and 3 more" in message
    assert "0 (0000ea2087020901.jpg)" not in message


def test_unknown_domains_are_listed(tmp_path):
    images = [_image_entry(0, "in-domain"), _image_entry(1, "in_domain"), _image_entry(2, "out")]
    path, root = _nocaps_file(tmp_path, images=images)
    with pytest.raises(ValueError, match="2 image\\(s\\) with a domain not in .*1 \\('in_domain'\\), 2 \\('out'\\)"):
        nocaps.read_nocaps(path, root)


def test_an_image_without_a_domain_is_an_error(tmp_path):
    images = [_image_entry(0, "in-domain"), _image_entry(1, "near-domain"), _image_entry(2, "out-domain")]
    del images[1]["domain"]
    path, root = _nocaps_file(tmp_path, images=images)
    with pytest.raises(ValueError, match=r"images\[1\] \(image 1, 0001ea2087020901.jpg\) has no 'domain'"):
        nocaps.read_nocaps(path, root)


def test_missing_image_files_are_listed(tmp_path):
    path, root = _nocaps_file(tmp_path, skip_files=("0002ea2087020901.jpg",))
    with pytest.raises(FileNotFoundError, match="1 of 3 image file\\(s\\) do not exist.*0002ea2087020901.jpg") as e:
        nocaps.read_nocaps(path, root)
    assert "0000ea2087020901.jpg" not in str(e.value)
    assert len(nocaps.read_nocaps(path, root, check_files=False)) == 3
    with pytest.raises(FileNotFoundError, match="3 of 3"):
        nocaps.read_nocaps(path, tmp_path / "no_such_folder")


def test_missing_or_malformed_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope.json"))):
        nocaps.read_nocaps(tmp_path / "nope.json", tmp_path)
    path = tmp_path / "broken.json"
    path.write_text('{"images": [')
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": invalid JSON"):
        nocaps.read_nocaps(path, tmp_path)
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="expected a COCO-format captions file"):
        nocaps.read_nocaps(path, tmp_path)


def test_the_test_image_info_file_is_refused(tmp_path):
    path = tmp_path / "nocaps_test_image_info.json"
    path.write_text(json.dumps({"licenses": [], "info": {}, "images": [_image_entry(0, "in-domain")]}))
    with pytest.raises(ValueError, match="has no 'annotations' list.*test image info"):
        nocaps.read_nocaps(path, tmp_path)


@pytest.mark.parametrize("edit, pattern", [
    (lambda d: d["images"][1].pop("file_name"), r"images\[1\] needs an integer 'id' and a string 'file_name'"),
    (lambda d: d["images"][0].update(id="0"), r"images\[0\] needs an integer 'id'"),
    (lambda d: d["images"][2].update(id=0), r"images\[2\]: image id 0 appears more than once"),
    (lambda d: d["images"][2].update(file_name=d["images"][0]["file_name"]),
     r"images\[2\]: file_name '0000ea2087020901.jpg' appears more than once"),
    (lambda d: d["annotations"][3].pop("caption"), r"annotations\[3\] needs an integer 'image_id' and a string"),
    (lambda d: d["annotations"][0].update(image_id=None), r"annotations\[0\] needs an integer 'image_id'"),
    (lambda d: d["annotations"].append({"image_id": 99, "id": 9, "caption": "x"}),
     r"captions of 1 image id\(s\) the file's 'images' do not list: 99"),
    (lambda d: d.update(images=[]), r"holds no images"),
])
def test_structure_errors_name_the_file_and_entry(tmp_path, edit, pattern):
    path, root = _nocaps_file(tmp_path)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=pattern) as e:
        nocaps.read_nocaps(path, root)
    assert str(path) in str(e.value)


def test_read_nocaps_from_a_bucket(tmp_path, gcs_dir):
    from aape_jax import storage

    path, root = _nocaps_file(tmp_path, skip_files=("0002ea2087020901.jpg",))
    for f in [path, *sorted(root.iterdir())]:
        storage.path(f"{gcs_dir}/{f.relative_to(tmp_path).as_posix()}").write_bytes(f.read_bytes())
    remote_path, remote_root = f"{gcs_dir}/{path.name}", f"{gcs_dir}/validation"
    remote = nocaps.read_nocaps(remote_path, remote_root, check_files=False)
    local = nocaps.read_nocaps(path, root, check_files=False)
    assert [(im.captioned.key, im.captioned.captions, im.domain) for im in remote] == [
        (im.captioned.key, im.captioned.captions, im.domain) for im in local]
    assert remote[0].captioned.image == f"{remote_root}/0000ea2087020901.jpg"
    with pytest.raises(FileNotFoundError, match=f"1 of 3 .*'{remote_root}/0002ea2087020901.jpg'"):
        nocaps.read_nocaps(remote_path, remote_root)
