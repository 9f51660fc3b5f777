"""Each suite read from the layouts its files arrive in: archives unpacked as shipped (top folders and .gz
included), the repositories cloned, and the folders its best-known consumers move the images to. Every test
builds its layout in tmp_path from the schema fixtures of tests/fixtures/suites/ (or tiny files written here)
and checks which images, languages, questions and references come back; when nothing is where any layout puts
it, the one-line error names the places tried."""

from __future__ import annotations

import gzip
import io
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from eval.suites import BenchmarkDataError, coco, maxm, multi30k, xgqa, xm3600
from eval.suites.loading import load_suite
from vlm.config import DataConfig, EvalConfig

FIXTURES = Path(__file__).parent / "fixtures" / "suites"
XM3600_KEYS = ["000411001ff7dd4f", "00ac7eb6e4c0b2d5", "01d4c1ee8a3f5b27", "02f2a8d1c9b7e364"]
MAXM_IDS = ["0a1b2c3d4e5f6071", "4ac1b2d3e5f60718", "5b9d0e1f2a3c4d5e", "7d6e5f4a3b2c1d0e"]
GQA_IDS = ["n117888", "n179136", "n235859", "n525029"]  # the test split's are the first two


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (40, 120, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture
def put_images(jpeg: bytes) -> Callable[[Path, list[str]], None]:
    def put(folder: Path, names: list[str]) -> None:
        for name in names:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(jpeg)
    return put


def copy_files(suite: str, target: Path, pattern: str = "*") -> Path:
    """The fixture files of `suite` matching `pattern` (relative paths kept), copied under `target`."""
    for path in (FIXTURES / suite).rglob(pattern):
        if path.is_file():
            destination = target / path.relative_to(FIXTURES / suite)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, destination)
    return target


def error_of(load: Callable, *args, **kwargs) -> str:
    with pytest.raises(BenchmarkDataError) as caught:
        load(*args, **kwargs)
    assert "\n" not in str(caught.value)
    return str(caught.value)


# ---------------------------------------------------------------- MaXM


@pytest.mark.parametrize("images", ["images", "maxm_v1_release/images", "xm3600/images", "Crossmodal3600/images"])
def test_maxm_as_unzipped_with_its_top_folder(images: str, tmp_path: Path, put_images) -> None:
    root = tmp_path / "maxm"
    copy_files("maxm", root / "maxm_v1_release")  # what maxm_v1_release.zip unpacks to
    put_images(root / images, [f"{key}.jpg" for key in MAXM_IDS])
    bench = maxm.load_maxm(root, ["en", "hi", "th", "he"])
    assert [image.key for image in bench.images] == MAXM_IDS
    assert [image.image for image in bench.images] == [root / images / f"{key}.jpg" for key in MAXM_IDS]
    assert bench.images[0].qa[0]["answers"] == ["दो", "2", "2 लोग"]
    assert [(q["lang"], q["answers"]) for q in bench.images[1].qa] == [("en", ["red"]), ("th", ["สีแดง", "แดง"])]
    assert bench.images[2].qa[1]["question"] == "מה צבע החולצה של האיש?"
    assert bench.source == ("MaXM v1: maxm_v1_release/maxm_v1_{en,hi,th,iw}.json "
                            "(7 questions on 4 XM3600 images)")


def test_maxm_reads_the_images_of_a_linked_xm3600_folder(tmp_path: Path, put_images) -> None:
    xm = tmp_path / "crossmodal-3600"
    put_images(xm / "images", [f"{key}.jpg" for key in MAXM_IDS])
    root = copy_files("maxm", tmp_path / "maxm")  # flattened (`unzip -j`)
    (root / "xm3600").symlink_to(xm, target_is_directory=True)
    bench = maxm.load_maxm(root, ["th"])
    assert bench.languages == ["th"] and bench.source.startswith("MaXM v1: maxm_v1_th.json (")
    thai = [MAXM_IDS[1], MAXM_IDS[3]]
    assert [image.image for image in bench.images] == [root / "xm3600" / "images" / f"{key}.jpg" for key in thai]
    assert bench.images[0].image.resolve() == (xm / "images" / f"{thai[0]}.jpg").resolve()


def test_maxm_nothing_where_any_layout_puts_it(tmp_path: Path) -> None:
    root = tmp_path / "maxm"
    root.mkdir()
    assert error_of(maxm.load_maxm, root, ["he"]) == (
        f"{root / 'maxm_v1_iw.json'}: annotation file not found (nor {root / 'maxm_v1_release/maxm_v1_iw.json'})")
    copy_files("maxm", root / "maxm_v1_release")
    tried = [root / folder / f"{MAXM_IDS[0]}.jpg"
             for folder in ("images", "maxm_v1_release/images", "xm3600/images", "Crossmodal3600/images")]
    assert error_of(maxm.load_maxm, root, ["en", "hi"]) == (
        f"{tried[0]}: image file not found (nor {', '.join(map(str, tried[1:]))}); nor any of the other 2 there")


# ---------------------------------------------------------------- Multi30K


def multi30k_root(root: Path, split: str, lines: list[str], captions: dict[str, list[str]], top: str = "") -> Path:
    """A multi30k/dataset clone holding one split: its image split file, and its raw captions gzipped as the repo
    ships them."""
    task1 = root / top / "data" / "task1"
    (task1 / "image_splits").mkdir(parents=True)
    (task1 / "image_splits" / f"{split}.txt").write_text("".join(line + "\n" for line in lines))
    (task1 / "raw").mkdir()
    for lang, texts in captions.items():
        raw = "".join(text + "\n" for text in texts).encode("utf-8")
        (task1 / "raw" / f"{split}.{lang}.gz").write_bytes(gzip.compress(raw))
    return root


FLICKR_2017 = ["22439193117_4183a49ec2.jpg", "8419925347_32ff7386ae.jpg"]
FLICKR_2018 = ["11832916064_229e7bd246.jpg", "138498067_bb1c460902.jpg"]
CAPTIONS_2017 = {"en": ["A man rides a bike.", "Two dogs play in snow."],
                 "de": ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee."],
                 "fr": ["Un homme fait du vélo.", "Deux chiens jouent dans la neige."]}
CAPTIONS_2018 = {**CAPTIONS_2017, "cs": ["Muž jede na kole.", "Dva psi si hrají ve sněhu."]}


@pytest.mark.parametrize(("split", "folder", "names", "captions", "source"), [
    ("test_2017_flickr", "task1", FLICKR_2017, CAPTIONS_2017, "2 Flickr images"),  # as its tarball unpacks
    ("test_2017_flickr", "test_2017_flickr", FLICKR_2017, CAPTIONS_2017, "2 Flickr images"),
    ("test_2018_flickr", "test_2018_flickr", FLICKR_2018, CAPTIONS_2018, "2 Flickr images"),
    ("val", "flickr30k-images", ["1000092795.jpg", "10002456.jpg"], CAPTIONS_2018, "2 Flickr30k images"),
    ("val", "flickr30k_images/flickr30k_images", ["1000092795.jpg", "10002456.jpg"], CAPTIONS_2018,
     "2 Flickr30k images"),  # Kaggle's zip
    ("test_2016_flickr", "data/task1/images", ["1007129816.jpg", "1009434119.jpg"], CAPTIONS_2018,
     "2 Flickr30k images"),  # one folder for every split
])
def test_multi30k_splits_in_their_image_folders(split, folder, names, captions, source, tmp_path, put_images) -> None:
    root = multi30k_root(tmp_path / "multi30k", split, names, captions)
    put_images(root / folder, names)
    bench = multi30k.load_multi30k(root, split=split)
    assert bench.languages == list(captions)  # every language the split has references in
    assert [image.key for image in bench.images] == [Path(name).stem for name in names]
    assert [image.image for image in bench.images] == [root / folder / name for name in names]
    assert bench.images[1].captions == {lang: [texts[1]] for lang, texts in captions.items()}
    assert bench.source == (f"Multi30K task1 {split}: image_splits/{split}.txt, "
                            f"raw/{split}.{{{','.join(captions)}}} ({source})")


MSCOCO_LINES = ["COCO_train2014_000000117071.jpg#367178", "COCO_val2014_000000398076.jpg#657409"]


@pytest.mark.parametrize("layout", ["coco", "translated_images"])
def test_multi30k_ambiguous_coco(layout: str, tmp_path: Path, put_images) -> None:
    root = multi30k_root(tmp_path / "multi30k", "test_2017_mscoco", MSCOCO_LINES, CAPTIONS_2017)
    files = [line.split("#")[0] for line in MSCOCO_LINES]
    expected = ([root / "train2014" / files[0], root / "val2014" / files[1]] if layout == "coco"
                else [root / "translated_images" / name for name in files])
    for path in expected:
        put_images(path.parent, [path.name])
    bench = multi30k.load_multi30k(root, ["fr", "en"], split="test_2017_mscoco")
    assert [image.key for image in bench.images] == ["COCO_train2014_000000117071", "COCO_val2014_000000398076"]
    assert [image.image for image in bench.images] == expected
    assert bench.images[0].captions == {"fr": ["Un homme fait du vélo."], "en": ["A man rides a bike."]}
    assert bench.source.endswith("raw/test_2017_mscoco.{fr,en} (2 COCO images)")


def test_multi30k_refuses_a_split_or_language_it_lacks(tmp_path: Path) -> None:
    root = tmp_path / "multi30k"
    root.mkdir()
    assert error_of(multi30k.load_multi30k, root, ["de", "cs"], split="test_2017_flickr") == (
        "Multi30K test_2017_flickr has no language 'cs'; available: en de fr")
    assert error_of(multi30k.load_multi30k, root, ["cs"], split="test_2017_mscoco") == (
        "Multi30K test_2017_mscoco has no language 'cs'; available: en de fr")
    assert error_of(multi30k.load_multi30k, root, split="train") == (
        "Multi30K has no split 'train'; available: test_2016_flickr test_2017_flickr test_2018_flickr "
        "test_2017_mscoco val")
    split_file = "data/task1/image_splits/test_2018_flickr.txt"
    assert error_of(multi30k.load_multi30k, root, split="test_2018_flickr") == (
        f"{root / split_file}: annotation file not found (nor {root / 'dataset-master' / split_file})")


def test_multi30k_from_githubs_zip_with_images_beside_it(tmp_path: Path, put_images) -> None:
    root = multi30k_root(tmp_path / "multi30k", "test_2018_flickr", FLICKR_2018, CAPTIONS_2018, top="dataset-master")
    put_images(root / "images", FLICKR_2018)
    bench = multi30k.load_multi30k(root, ["cs"], split="test_2018_flickr")
    assert [image.image for image in bench.images] == [root / "images" / name for name in FLICKR_2018]
    assert [image.captions for image in bench.images] == [{"cs": [text]} for text in CAPTIONS_2018["cs"]]


def test_multi30k_split_through_the_eval_config(tmp_path: Path, put_images) -> None:
    root = multi30k_root(tmp_path / "multi30k", "test_2017_flickr", FLICKR_2017, CAPTIONS_2017)
    put_images(root / "task1", FLICKR_2017)
    cfg = EvalConfig(suite="multi30k", data_root=str(root), split="test_2017_flickr", languages=["de"])
    bench = load_suite(cfg, DataConfig())
    assert bench.languages == ["de"] and bench.images[0].captions == {"de": ["Ein Mann fährt Fahrrad."]}


# ---------------------------------------------------------------- XM3600


def test_xm3600_images_unpacked_beside_the_captions(tmp_path: Path, put_images) -> None:
    root = copy_files("xm3600", tmp_path / "xm3600")
    put_images(root, [f"{key}.jpg" for key in XM3600_KEYS])  # `tar -xzf images.tgz -C DIR`: the tgz has no folder
    bench = xm3600.load_xm3600(root, ["zh"])
    assert [image.image for image in bench.images] == [root / f"{key}.jpg" for key in XM3600_KEYS]
    assert bench.images[2].captions == {"zh": ["两个孩子在公园里放风筝。", "孩子们在草地上玩风筝。"]}
    (root / f"{XM3600_KEYS[0]}.jpg").rename(root / "elsewhere.jpg")  # one image gone: counted, not searched for
    assert error_of(xm3600.load_xm3600, root, ["zh"]) == (
        f"{root / XM3600_KEYS[0]}.jpg: image file not found (1 of 4 images missing)")


def test_xm3600_without_images_names_both_places(tmp_path: Path) -> None:
    root = copy_files("xm3600", tmp_path / "xm3600")
    first = f"{XM3600_KEYS[0]}.jpg"
    assert error_of(xm3600.load_xm3600, root, ["en"]) == (
        f"{root / 'images' / first}: image file not found (nor {root / first}); nor any of the other 3 there")


# ---------------------------------------------------------------- xGQA


def test_xgqa_from_a_clone_of_adapter_hub_xgqa(tmp_path: Path, put_images) -> None:
    root = tmp_path / "xGQA"
    copy_files("xgqa", tmp_path / "iglue")
    shutil.copytree(tmp_path / "iglue" / "annotations", root / "data")  # the same files under data/
    put_images(root / "images", [f"{key}.jpg" for key in GQA_IDS])
    bench = xgqa.load_xgqa(root, ["zh", "bn"])
    assert bench.source == "xGQA test: data/few_shot/{zh,bn}/test.json (4 questions on 2 GQA images)"
    assert [image.image for image in bench.images] == [root / "images" / f"{key}.jpg" for key in GQA_IDS[:2]]
    assert [(q["lang"], q["answers"]) for q in bench.images[0].qa] == [("zh", ["aluminum"]), ("bn", ["aluminum"])]
    assert xgqa.load_xgqa(root, ["en"], split="testdev").source.startswith(
        "xGQA testdev: data/zero_shot/testdev_balanced_questions_en.json (")


def test_xgqa_dev_split(tmp_path: Path, put_images) -> None:
    root = copy_files("xgqa", tmp_path / "xgqa")
    (root / "annotations/few_shot/zh/test.json").rename(root / "annotations/few_shot/zh/dev.json")
    put_images(root / "images", [f"{key}.jpg" for key in GQA_IDS])
    bench = xgqa.load_xgqa(root, ["zh"], split="dev")
    assert bench.source == "xGQA dev: annotations/few_shot/zh/dev.json (2 questions on 2 GQA images)"
    assert bench.images[1].qa[0]["question"] == "看起来湿漉漉的冲浪者穿着潜水服吗？"
    assert error_of(xgqa.load_xgqa, root, ["zh"]) == (  # the test split is gone
        f"{root / 'annotations/few_shot/zh/test.json'}: annotation file not found "
        f"(nor {root / 'data/few_shot/zh/test.json'})")


# ---------------------------------------------------------------- xFlickr&CO


@pytest.mark.parametrize(("flickr", "coco_folder"), [
    ("flickr30k_images/flickr30k_images", "images/val2014"),  # Kaggle's Flickr30k zip; COCO under images/
    ("images", "images"),  # one folder holding both
])
def test_xflickrco_image_folders(flickr: str, coco_folder: str, tmp_path: Path, put_images) -> None:
    root = copy_files("xflickrco", tmp_path / "xflickrco")
    flickr_names = ["1007129816.jpg", "1009434119.jpg", "101362133.jpg"]
    put_images(root / flickr, flickr_names)
    put_images(root / coco_folder, ["COCO_val2014_000000490688.jpg"])
    bench = multi30k.load_xflickrco(root, ["ja"])
    assert [image.image for image in bench.images] == (
        [root / flickr / name for name in flickr_names] + [root / coco_folder / "COCO_val2014_000000490688.jpg"])
    assert bench.images[0].captions == {"ja": ["耳ピアスをした1男が、3メガネをかけて4オレンジ色の帽子をかぶっている。"]}
    assert bench.source == "xFlickr&CO annotations/ja/test.jsonl (3 Flickr30k + 1 COCO images)"


# ---------------------------------------------------------------- COCO Karpathy


@pytest.mark.parametrize("annotations", ["annotations", "caption_datasets"])
def test_coco_karpathy_json_in_a_folder_and_images_under_images(annotations: str, tmp_path, put_images) -> None:
    root = tmp_path / "coco"
    copy_files("coco", root / annotations)
    put_images(root / "images", ["val2014/COCO_val2014_000000391895.jpg", "val2014/COCO_val2014_000000522418.jpg"])
    bench = coco.load_coco(root)
    assert [image.key for image in bench.images] == ["391895", "522418"]
    assert [image.image for image in bench.images] == [
        root / "images/val2014/COCO_val2014_000000391895.jpg", root / "images/val2014/COCO_val2014_000000522418.jpg"]
    assert bench.images[0].captions["en"][0] == "A man with a red helmet on a small moped on a dirt road."
    assert bench.source == f"COCO Karpathy {annotations}/dataset_coco.json, split 'test' (2 images)"
    assert error_of(coco.load_coco, root, split="train") == (  # train2014 not downloaded
        f"{root / 'train2014/COCO_train2014_000000057870.jpg'}: image file not found "
        f"(nor {root / 'images/train2014/COCO_train2014_000000057870.jpg'})")
